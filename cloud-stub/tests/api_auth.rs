//! Every API endpoint against every kind of caller: no token, a wrong token, the
//! operator, the tenant itself, another tenant, the tenant's reseller and another
//! reseller. The API runs on a real socket over a real store; requests go through
//! reqwest.

use platen_cloud::http::api;
use platen_cloud::http::auth::{hash_token, Auth};
use platen_cloud::ops::Ops;
use platen_cloud::plans::catalog::Catalog;
use platen_cloud::store::Store;
use serde_json::{json, Value};
use std::sync::Arc;

const ACTORS: [&str; 5] = [
    "operator",
    "tenant:acme",
    "tenant:other",
    "reseller:r1",
    "reseller:r2",
];

fn token(actor: &str) -> String {
    format!("plt_{}", hash_token(actor))
}

struct Api {
    base: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Api {
    async fn call(
        &self,
        who: Option<&str>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .client
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        match who {
            Some("wrong") => req = req.bearer_auth("plt_not-a-token"),
            Some(a) => req = req.bearer_auth(token(a)),
            None => {}
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let tokens: String = ACTORS
        .iter()
        .map(|a| {
            format!(
                "[[token]]\nname = \"{a}\"\nactor = \"{a}\"\nsha256 = \"{}\"\n",
                hash_token(&token(a))
            )
        })
        .collect();
    let tokens_file = dir.path().join("tokens.toml");
    std::fs::write(&tokens_file, tokens).unwrap();

    let catalog = Catalog::parse(include_str!("../../packaging/catalog.example.toml")).unwrap();
    let ops = Ops::new(Store::open_sled(dir.path()).unwrap(), Default::default())
        .with_catalog(catalog)
        .unwrap();
    let migrations = platen_cloud::ops::migrations::Migrations::new(ops.clone());
    let app = api::router(
        ops,
        migrations,
        Arc::new(Auth::from_file(&tokens_file).unwrap()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let api = Api {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        _dir: dir,
    };
    let op = Some("operator");
    for (path, body) in [
        ("/v1/resellers", json!({"id": "r1", "name": "R1"})),
        ("/v1/resellers", json!({"id": "r2", "name": "R2"})),
        (
            "/v1/tenants",
            json!({"id": "acme", "name": "Acme", "reseller": "r1"}),
        ),
        (
            "/v1/tenants",
            json!({"id": "other", "name": "Other", "reseller": "r2"}),
        ),
        (
            "/v1/contracts",
            json!({"id": "c1", "tenant": "acme", "printers": ["p1"], "plan": "mono-1000",
                   "time_zone": "Europe/Berlin", "currency": "EUR"}),
        ),
        (
            "/v1/contracts",
            json!({"id": "c2", "tenant": "other", "printers": ["p2"], "plan": "mono-1000",
                   "time_zone": "Europe/Berlin", "currency": "EUR"}),
        ),
    ] {
        let (s, v) = api.call(op, "POST", path, Some(body)).await;
        assert_eq!(s, 201, "seed {path}: {v}");
    }
    api
}

/// One endpoint: the status expected for each of [`ACTORS`], in order.
struct Case {
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    expect: [u16; 5],
}

fn case(method: &'static str, path: &'static str, body: Option<Value>, expect: [u16; 5]) -> Case {
    Case {
        method,
        path,
        body,
        expect,
    }
}

/// A migration of acme's asked by `who`, stored refused or accepted: its id.
async fn acme_migration(api: &Api, who: &str) -> String {
    let (s, m) = api
        .call(
            Some(who),
            "POST",
            "/v1/migrations",
            Some(json!({"tenant": "acme", "contract": "c1", "plan": "color-2000"})),
        )
        .await;
    assert!(s == 201 || s == 422, "{s} {m}");
    m["migration"]["id"]
        .as_str()
        .or(m["id"].as_str())
        .unwrap_or_else(|| panic!("{m}"))
        .to_string()
}

#[tokio::test]
async fn every_endpoint_answers_each_actor_as_its_scope_allows() {
    let api = start().await;
    let mid = acme_migration(&api, "tenant:acme").await;
    let mig_path: &'static str = Box::leak(format!("/v1/migrations/{mid}").into_boxed_str());

    //                      operator acme other r1   r2
    let cases = [
        case(
            "POST",
            "/v1/tenants",
            Some(json!({"id": "t9", "name": "T9"})),
            [201, 403, 403, 403, 403],
        ),
        case("GET", "/v1/tenants", None, [200, 200, 200, 200, 200]),
        case(
            "POST",
            "/v1/plans",
            Some(
                json!({"id": "x", "name": "x", "service": {"kind": "flat_rate_print", "monthly_fee": 1, "page_cap": 1}}),
            ),
            [409, 403, 403, 403, 403],
        ),
        case("GET", "/v1/plans", None, [200, 200, 200, 200, 200]),
        case(
            "POST",
            "/v1/contracts",
            Some(
                json!({"id": "c9", "tenant": "acme", "printers": ["p9"], "plan": "mono-1000", "time_zone": "UTC", "currency": "EUR"}),
            ),
            [201, 403, 403, 403, 403],
        ),
        case("GET", "/v1/contracts/c1", None, [200, 200, 404, 200, 404]),
        case(
            "POST",
            "/v1/contracts/c1/changes",
            Some(json!({"settings": {"sysContact": "x"}})),
            [201, 403, 404, 403, 404],
        ),
        case(
            "GET",
            "/v1/contracts/c1/timeline",
            None,
            [200, 200, 404, 200, 404],
        ),
        case(
            "GET",
            "/v1/contracts/c1/usage",
            None,
            [200, 200, 404, 200, 404],
        ),
        case("GET", "/v1/contracts/nope", None, [404, 404, 404, 404, 404]),
        case("GET", "/v1/ledger", None, [200, 200, 200, 200, 200]),
        case(
            "GET",
            "/v1/ledger?tenant=acme",
            None,
            [200, 200, 200, 200, 200],
        ),
        case(
            "POST",
            "/v1/resellers",
            Some(json!({"id": "r9", "name": "R9"})),
            [201, 403, 403, 403, 403],
        ),
        case("GET", "/v1/resellers", None, [200, 403, 403, 200, 200]),
        case("GET", "/v1/catalog", None, [200, 200, 200, 200, 200]),
        case(
            "POST",
            "/v1/migrations",
            Some(json!({"tenant": "acme", "contract": "c1", "plan": "mono-500", "dry_run": true})),
            [200, 200, 404, 200, 404],
        ),
        case("GET", "/v1/migrations", None, [200, 200, 200, 200, 200]),
        case("GET", mig_path, None, [200, 200, 404, 200, 404]),
    ];
    for c in &cases {
        for who in [None, Some("wrong")] {
            let (s, v) = api.call(who, c.method, c.path, c.body.clone()).await;
            assert_eq!(s, 401, "{} {} as {who:?}: {v}", c.method, c.path);
            assert_eq!(v["error"]["code"], "unauthenticated");
        }
        for (who, want) in ACTORS.iter().zip(c.expect) {
            let (s, v) = api.call(Some(who), c.method, c.path, c.body.clone()).await;
            assert_eq!(s, want, "{} {} as {who}: {v}", c.method, c.path);
            if want == 403 {
                assert_eq!(v["error"]["code"], "forbidden", "{v}");
            }
        }
    }

    // Lists hold only what the caller may see.
    let ids = |v: &Value, key: &str| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x[key].as_str().unwrap().to_string())
            .collect()
    };
    for (who, want) in [
        ("operator", vec!["acme", "other", "t9"]),
        ("tenant:acme", vec!["acme"]),
        ("reseller:r2", vec!["other"]),
    ] {
        assert_eq!(
            ids(&api_get(&api, who, "/v1/tenants").await, "id"),
            want,
            "{who}"
        );
    }
    assert_eq!(
        ids(&api_get(&api, "reseller:r1", "/v1/resellers").await, "id"),
        ["r1"]
    );
    let acme_migrations = api_get(&api, "tenant:acme", "/v1/migrations").await;
    assert_eq!(acme_migrations.as_array().unwrap().len(), 1);
    for who in ["tenant:other", "reseller:r2"] {
        assert_eq!(
            api_get(&api, who, "/v1/migrations").await,
            json!([]),
            "{who}"
        );
    }

    // Cancelling someone else's migration looks like a missing one.
    for who in ["tenant:other", "reseller:r2"] {
        let (s, v) = api.call(Some(who), "DELETE", mig_path, None).await;
        assert_eq!(s, 404, "{who}: {v}");
    }
    let (s, v) = api.call(None, "DELETE", mig_path, None).await;
    assert_eq!(s, 401, "{v}");
    // The health check needs no token.
    let (s, _) = api.call(None, "GET", "/healthz", None).await;
    assert_eq!(s, 200);
}

/// What a caller may not see answers exactly as if it did not exist: for each actor
/// and each endpoint that names something (`NAME` in the templates), the request
/// naming another's object and the same request naming one that does not exist get
/// the same status, code and message (but for the name), and a filter on another's
/// tenant lists nothing.
#[tokio::test]
async fn what_a_caller_may_not_see_answers_as_if_it_did_not_exist() {
    let api = start().await;
    let mid = acme_migration(&api, "operator").await;
    let (s, v) = api
        .call(
            Some("reseller:r1"),
            "POST",
            "/v1/webhooks/endpoints",
            Some(json!({"id": "r1-billing", "url": "http://127.0.0.1:9/hook"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");

    // (method, path, body) with `NAME` where the hidden object's name goes.
    let named: Vec<(&str, String, Option<String>)> = vec![
        ("GET", "/v1/contracts/NAME".into(), None),
        ("GET", "/v1/contracts/NAME/timeline".into(), None),
        ("GET", "/v1/contracts/NAME/usage".into(), None),
        (
            "POST",
            "/v1/contracts/NAME/changes".into(),
            Some(r#"{"settings": {"sysContact": "x"}}"#.into()),
        ),
        (
            "POST",
            "/v1/migrations".into(),
            Some(
                r#"{"tenant": "acme", "contract": "NAME", "plan": "mono-500", "dry_run": true}"#
                    .into(),
            ),
        ),
    ];
    let tenant_named: Vec<(&str, String, Option<String>)> = vec![(
        "POST",
        "/v1/migrations".into(),
        Some(r#"{"tenant": "NAME", "plan": "mono-500", "dry_run": true}"#.into()),
    )];
    let migration_named: Vec<(&str, String, Option<String>)> = vec![
        ("GET", "/v1/migrations/NAME".into(), None),
        ("DELETE", "/v1/migrations/NAME".into(), None),
    ];
    let endpoint_named: Vec<(&str, String, Option<String>)> = vec![
        (
            "POST",
            "/v1/webhooks/endpoints/NAME/rotate".into(),
            Some("{}".into()),
        ),
        ("POST", "/v1/webhooks/endpoints/NAME/disable".into(), None),
        ("POST", "/v1/webhooks/endpoints/NAME/enable".into(), None),
    ];
    // (who, requests, the hidden name, a missing name)
    let mut checks = Vec::new();
    for who in ["tenant:other", "reseller:r2"] {
        checks.push((who, &named, "c1", "c404"));
        checks.push((who, &tenant_named, "acme", "nobody"));
        checks.push((who, &migration_named, mid.as_str(), "m404.1"));
    }
    checks.push(("reseller:r2", &endpoint_named, "r1-billing", "nope"));
    let mut compared = 0;
    for (who, requests, hidden, missing) in checks {
        for (method, path, body) in requests.iter() {
            let request = |name: &str| {
                let path = path.replace("NAME", name);
                let body = body
                    .as_ref()
                    .map(|b| serde_json::from_str::<Value>(&b.replace("NAME", name)).unwrap());
                (path, body)
            };
            let (p1, b1) = request(hidden);
            let (s1, v1) = api.call(Some(who), method, &p1, b1).await;
            let (p2, b2) = request(missing);
            let (s2, v2) = api.call(Some(who), method, &p2, b2).await;
            let what = format!("{method} {path} as {who}");
            assert_eq!(s1, s2, "{what}: {v1} vs {v2}");
            assert_eq!(s1, 404, "{what}: {v1}");
            assert_eq!(v1["error"]["code"], v2["error"]["code"], "{what}");
            assert_eq!(
                v1["error"]["message"]
                    .as_str()
                    .unwrap()
                    .replace(hidden, missing),
                v2["error"]["message"].as_str().unwrap(),
                "{what}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 2 * (5 + 1 + 2) + 3);

    // Filters naming another's tenant or contract list nothing, as a missing one.
    for who in ["tenant:other", "reseller:r2"] {
        for q in [
            "/v1/ledger?tenant=NAME",
            "/v1/contracts?tenant=NAME",
            "/v1/migrations?tenant=NAME",
        ] {
            for name in ["acme", "nobody"] {
                let path = q.replace("NAME", name);
                assert_eq!(
                    api_get(&api, who, &path).await,
                    json!([]),
                    "{path} as {who}"
                );
            }
        }
        for q in ["/v1/ledger?contract=NAME", "/v1/migrations?contract=NAME"] {
            for name in ["c1", "c404"] {
                let path = q.replace("NAME", name);
                assert_eq!(
                    api_get(&api, who, &path).await,
                    json!([]),
                    "{path} as {who}"
                );
            }
        }
    }
}

async fn api_get(api: &Api, who: &str, path: &str) -> Value {
    let (s, v) = api.call(Some(who), "GET", path, None).await;
    assert_eq!(s, 200, "{path} as {who}: {v}");
    v
}
