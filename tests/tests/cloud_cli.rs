//! The `platen-cloud` command line and the HTTP API's error answers, against a
//! running `platen-cloud serve` (real Mosquitto and provider).

use platen_e2e::*;

use platen_e2e::cloud_cli as cli;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drives_the_api_and_errors_are_machine_readable() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let provider = ProviderProc::start();
    let cloud = CloudProc::start(broker.port, &dir.path().join("cloud"), &provider.url);
    let api = cloud.api.as_str();
    let plan_file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../packaging/plan.example.toml"
    );

    let (code, out, err) = cli(api, &["tenant", "create", "--id", "acme", "--name", "Acme"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"acme\""), "{out}");
    let (code, out, err) = cli(api, &["plan", "create", plan_file]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("flat_rate_print"), "{out}");
    let create = [
        "contract",
        "create",
        "--id",
        "c9",
        "--tenant",
        "acme",
        "--printer",
        "p9",
        "--plan",
        "flat-5000",
        "--currency",
        "EUR",
        "--time-zone",
        "Europe/Berlin",
        "--set",
        "sysLocation=Hall 9",
    ];
    let (code, out, err) = cli(api, &create);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"c9.1\""), "{out}");
    let (code, _, err) = cli(api, &create);
    assert_eq!(code, 1);
    assert!(
        err.contains("409") && err.contains("contract_exists"),
        "{err}"
    );
    let (code, out, err) = cli(api, &["contract", "change", "c9", "--set", "sysName=PRN-9"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("settings_change"), "{out}");
    let (code, out, _) = cli(api, &["contract", "show", "c9"]);
    assert_eq!(code, 0);
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["changes"].as_array().unwrap().len(), 2);
    assert_eq!(status["settings"]["sysName"], "PRN-9");
    assert_eq!(status["settings"]["sysLocation"], "Hall 9");
    let (code, out, _) = cli(api, &["contract", "timeline", "c9"]);
    assert_eq!(code, 0);
    assert!(out.contains("change_requested"), "{out}");
    let (code, out, _) = cli(api, &["ledger", "--contract", "c9"]);
    assert_eq!((code, out.trim()), (0, "[]"));
    let (code, _, err) = cli(api, &["contract", "show", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown_contract"), "{err}");
    let (code, _, err) = cli("http://127.0.0.1:1", &["tenant", "list"]);
    assert_eq!(code, 2, "unreachable API is exit 2: {err}");

    // HTTP errors: status + {"error": {"code", "message"}}.
    let cases: Vec<(&str, &str, Option<serde_json::Value>, u16, &str)> = vec![
        ("GET", "/v1/nope", None, 404, "not_found"),
        ("GET", "/v1/contracts/zzz", None, 404, "unknown_contract"),
        (
            "POST",
            "/v1/tenants",
            Some(serde_json::json!({"id": "bad id!", "name": "x"})),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/tenants",
            Some(serde_json::json!({"id": "t2", "name": "x", "extra": 1})),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/plans",
            Some(
                serde_json::json!({"id": "p", "name": "P", "service": {"kind": "basic", "monthly_fee": -1}}),
            ),
            400,
            "bad_request",
        ),
        (
            "POST",
            "/v1/contracts",
            Some(
                serde_json::json!({"id": "c10", "tenant": "acme", "printers": ["p1"], "plan": "flat-5000", "time_zone": "Nowhere/City", "currency": "EUR"}),
            ),
            422,
            "invalid",
        ),
        (
            "POST",
            "/v1/contracts/c9/changes",
            Some(serde_json::json!({"plan": "gold"})),
            404,
            "unknown_plan",
        ),
        (
            "POST",
            "/v1/tenants",
            Some(serde_json::Value::String("x".repeat(300 * 1024))),
            413,
            "too_large",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (s, v) = http_json(method, &format!("{api}{path}"), body).await;
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {v}"
        );
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let (s, _) = http_json("GET", &format!("{api}/v1/tenants"), None).await;
    assert_eq!(s, 200, "the server survived bad input");
}

/// Every list is paged by cursor: pages of `limit`, a `Link` to the next, stable when
/// items are inserted meanwhile; the CLI follows the links and prints one list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paged_by_cursor_and_the_cli_reads_every_page() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let provider = ProviderProc::start();
    let cloud = CloudProc::start(broker.port, &dir.path().join("cloud"), &provider.url);
    let api = cloud.api.as_str();
    for i in 0..230 {
        let (s, v) = http_json(
            "POST",
            &format!("{api}/v1/tenants"),
            Some(serde_json::json!({"id": format!("t{i:03}"), "name": "T"})),
        )
        .await;
        assert_eq!(s, 201, "{v}");
    }
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let get = |url: String| {
        let client = client.clone();
        async move {
            let r = client
                .get(&url)
                .bearer_auth(test_token("operator"))
                .send()
                .await
                .unwrap();
            let link = r
                .headers()
                .get("link")
                .map(|v| v.to_str().unwrap().to_string());
            let items: Vec<serde_json::Value> = r.json().await.unwrap();
            (items, link)
        }
    };
    let next_of = |link: &str| -> String {
        let path = link
            .strip_prefix('<')
            .and_then(|l| l.split_once(">; rel=\"next\""))
            .unwrap()
            .0;
        format!("{api}{path}")
    };
    let (first, link) = get(format!("{api}/v1/tenants?limit=100")).await;
    assert_eq!(first.len(), 100);
    assert_eq!(first[99]["id"], "t099");
    // A tenant inserted before the cursor does not shift the next page.
    let (s, _) = http_json(
        "POST",
        &format!("{api}/v1/tenants"),
        Some(serde_json::json!({"id": "a-new", "name": "A"})),
    )
    .await;
    assert_eq!(s, 201);
    let (second, link2) = get(next_of(&link.expect("a next page"))).await;
    assert_eq!(second.len(), 100);
    assert_eq!(second[0]["id"], "t100");
    let (third, link3) = get(next_of(&link2.expect("a third page"))).await;
    assert_eq!(third.len(), 30);
    assert_eq!(third[29]["id"], "t229");
    assert!(link3.is_none(), "the last page has no next");
    let (s, v) = http_json("GET", &format!("{api}/v1/tenants?limit=0"), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (400, Some("bad_request")));
    let (s, _) = http_json("GET", &format!("{api}/v1/tenants?limit=1001"), None).await;
    assert_eq!(s, 400);
    // The CLI reads every page (default 100 each): 231 tenants.
    let (code, out, err) = cloud_cli(api, &["tenant", "list"]);
    assert_eq!(code, 0, "{err}");
    let all: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(all.len(), 231);
}

/// The webhook commands: an endpoint created with its secret shown once, listed
/// without it, rotated, disabled and enabled; events and deliveries listed; a replay
/// needs an event or a time; a tenant may not touch endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_webhook_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start(false);
    let provider = ProviderProc::start();
    let cloud = CloudProc::start(broker.port, &dir.path().join("cloud"), &provider.url);
    let api = cloud.api.as_str();
    let (code, out, err) = cli(
        api,
        &[
            "webhooks",
            "create",
            "--id",
            "billing",
            "--url",
            "http://127.0.0.1:9/hook",
            "--events",
            "credit.issued,credit.corrected",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(v["endpoint"]["events"].as_array().unwrap().len(), 2);
    let (code, out, _) = cli(api, &["webhooks", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("billing") && !out.contains("whsec_"), "{out}");
    let (code, out, err) = cli(
        api,
        &["webhooks", "rotate", "billing", "--keep-old-secs", "60"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_ne!(v["secret"].as_str().unwrap(), secret);
    assert_eq!(v["endpoint"]["secrets"].as_array().unwrap().len(), 2);
    let (code, out, _) = cli(api, &["webhooks", "disable", "billing"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"disabled\": true"), "{out}");
    let (code, out, _) = cli(api, &["webhooks", "enable", "billing"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"disabled\": false"), "{out}");
    let (code, out, _) = cli(api, &["webhooks", "events"]);
    assert_eq!((code, out.trim()), (0, "[]"));
    let (code, out, _) = cli(api, &["webhooks", "deliveries", "--state", "failed"]);
    assert_eq!((code, out.trim()), (0, "[]"));
    let (code, _, err) = cli(api, &["webhooks", "event", "credit.issued/none/2026-01"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown_event"), "{err}");
    let (code, _, err) = cli(api, &["webhooks", "replay"]);
    assert_eq!(code, 2, "{err}");
    let (code, out, err) = cli(
        api,
        &["webhooks", "replay", "--since", "2026-01-01T00:00:00Z"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"replayed\": 0"), "{out}");
    // The finance export from the command line (an empty period: the header only).
    let (code, out, err) = cli(api, &["ledger", "--period", "2026-03", "--format", "csv"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("key,kind,tenant,contract"), "{out}");
    let (code, _, err) = cli(api, &["ledger", "--period", "2026-13"]);
    assert_eq!(code, 1);
    assert!(err.contains("period: YYYY-MM"), "{err}");
    // A reseller manages endpoints of its own and sees no one else's.
    let (code, out, err) = cloud_cli_as(
        api,
        "reseller:r1",
        &[
            "webhooks",
            "create",
            "--id",
            "r1-billing",
            "--url",
            "https://r1.example/hook",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"reseller\": \"r1\""), "{out}");
    let (_, out, _) = cloud_cli_as(api, "reseller:r1", &["webhooks", "list"]);
    assert!(
        out.contains("r1-billing") && !out.contains("\"billing\""),
        "{out}"
    );
    let (code, _, err) = cloud_cli_as(api, "reseller:r1", &["webhooks", "disable", "billing"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("404") && err.contains("unknown_endpoint"),
        "{err}"
    );
    let (_, out, _) = cli(api, &["webhooks", "list"]);
    assert!(
        out.contains("r1-billing") && out.contains("\"billing\""),
        "{out}"
    );
    let (code, _, err) = cloud_cli_as(
        api,
        "reseller:r1",
        &["webhooks", "replay", "--since", "2026-01-01T00:00:00Z"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("403"), "{err}");
    let (code, _, err) = cloud_cli_as(api, "tenant:acme", &["webhooks", "list"]);
    assert_eq!(code, 1);
    assert!(err.contains("403"), "{err}");
}
