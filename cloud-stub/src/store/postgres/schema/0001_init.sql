-- Platen cloud schema, version 1.
--
-- Every record keeps its whole JSON form in `doc` (what the sled backend stores),
-- and the columns the cloud looks things up by, or that finance queries, beside it.
-- Keys sort as bytes (COLLATE "C"), as in the embedded store. Every timestamp is
-- timestamptz (UTC inside); money is BIGINT minor units with an ISO 4217 currency.
-- Every row of a tenant's data carries its tenant. Not tenant-owned: plans (the
-- catalog), resellers, and agents (a gateway may serve several tenants).

CREATE SEQUENCE platen_ids;

CREATE TABLE resellers (
    id   text COLLATE "C" PRIMARY KEY,
    doc  jsonb NOT NULL
);

CREATE TABLE tenants (
    id       text COLLATE "C" PRIMARY KEY,
    reseller text COLLATE "C" REFERENCES resellers (id),
    doc      jsonb NOT NULL
);

CREATE TABLE plans (
    id   text COLLATE "C" PRIMARY KEY,
    doc  jsonb NOT NULL
);

CREATE TABLE contracts (
    id         text COLLATE "C" PRIMARY KEY,
    tenant     text COLLATE "C" NOT NULL,
    created_at timestamptz NOT NULL,
    doc        jsonb NOT NULL
);
CREATE INDEX contracts_by_tenant ON contracts (tenant, id);

-- The contract that covers a printer (claimed when the contract is created).
CREATE TABLE printer_contracts (
    tenant   text COLLATE "C" NOT NULL,
    printer  text COLLATE "C" NOT NULL,
    contract text COLLATE "C" NOT NULL REFERENCES contracts (id),
    PRIMARY KEY (tenant, printer)
);

-- A contract change and its setup state; `due_at` is when the engine next looks at
-- it (NULL: not due; a settled change is never due).
CREATE TABLE changes (
    id       text COLLATE "C" PRIMARY KEY,
    tenant   text COLLATE "C" NOT NULL,
    contract text COLLATE "C" NOT NULL REFERENCES contracts (id),
    seq      integer NOT NULL CHECK (seq >= 0),
    due_at   timestamptz,
    settled  boolean NOT NULL DEFAULT false,
    doc      jsonb NOT NULL,
    UNIQUE (contract, seq),
    CHECK (NOT (settled AND due_at IS NOT NULL))
);
CREATE INDEX changes_due ON changes (due_at, id) WHERE due_at IS NOT NULL;

-- Last config version published per printer.
CREATE TABLE versions (
    tenant  text COLLATE "C" NOT NULL,
    printer text COLLATE "C" NOT NULL,
    last    bigint NOT NULL CHECK (last >= 0),
    PRIMARY KEY (tenant, printer)
);

-- The evidence timeline: appended, never rewritten but for its repeat count. An
-- observation that happens once per change has a once_key, unique per change.
CREATE TABLE timeline (
    change_id text COLLATE "C" NOT NULL REFERENCES changes (id),
    seq       bigint NOT NULL,
    tenant    text COLLATE "C" NOT NULL,
    at        timestamptz NOT NULL,
    once_key  text COLLATE "C",
    doc       jsonb NOT NULL,
    PRIMARY KEY (change_id, seq),
    UNIQUE (change_id, once_key)
);

-- One compensation per (change, period); a reversal's period ends in /reversal.
CREATE TABLE ledger (
    key          text COLLATE "C" PRIMARY KEY,
    tenant       text COLLATE "C" NOT NULL,
    contract     text COLLATE "C" NOT NULL REFERENCES contracts (id),
    change_id    text COLLATE "C" NOT NULL REFERENCES changes (id),
    period       text COLLATE "C" NOT NULL,
    currency     char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- The fee credit this entry adds: negative for a reversal.
    amount_minor bigint NOT NULL,
    reverses     text COLLATE "C" REFERENCES ledger (key),
    created_at   timestamptz NOT NULL,
    doc          jsonb NOT NULL,
    UNIQUE (change_id, period),
    CHECK (key = change_id || '/' || period),
    CHECK ((reverses IS NULL) = (amount_minor >= 0) OR amount_minor = 0)
);
CREATE INDEX ledger_by_tenant ON ledger (tenant, key);
CREATE INDEX ledger_by_contract ON ledger (contract, key);

-- Shipments the provider accepted, by ledger key.
CREATE TABLE shipments_sent (
    key    text COLLATE "C" PRIMARY KEY REFERENCES ledger (key),
    tenant text COLLATE "C" NOT NULL,
    at     timestamptz NOT NULL
);

CREATE TABLE migrations (
    id           text COLLATE "C" PRIMARY KEY,
    tenant       text COLLATE "C" NOT NULL,
    contract     text COLLATE "C" NOT NULL,
    state        text NOT NULL,
    decided_at   timestamptz NOT NULL,
    effective_at timestamptz,
    doc          jsonb NOT NULL
);
CREATE INDEX migrations_by_tenant ON migrations (tenant, id);
CREATE INDEX migrations_by_contract ON migrations (contract, id);
CREATE INDEX migrations_scheduled ON migrations (id) WHERE state = 'scheduled';

-- Every version the cloud published (a report of any other is refused), and for
-- which change (NULL: published by hand).
CREATE TABLE published (
    tenant    text COLLATE "C" NOT NULL,
    printer   text COLLATE "C" NOT NULL,
    version   bigint NOT NULL CHECK (version >= 0),
    at        timestamptz NOT NULL,
    change_id text COLLATE "C",
    PRIMARY KEY (tenant, printer, version)
);

-- Apply reports, unique by report id (agents deliver at least once).
CREATE TABLE reports (
    report_id   text COLLATE "C" PRIMARY KEY,
    tenant      text COLLATE "C" NOT NULL,
    printer     text COLLATE "C" NOT NULL,
    version     bigint NOT NULL CHECK (version >= 0),
    received_at timestamptz NOT NULL,
    -- json, not jsonb: kept as the agent sent it (checked, not converted), the
    -- cheapest to insert at ingest rates; queries cast it (doc::jsonb).
    doc         json NOT NULL
);
CREATE INDEX reports_by_version ON reports (tenant, printer, version, report_id);

CREATE TABLE agents_seen (
    agent text COLLATE "C" PRIMARY KEY,
    doc   jsonb NOT NULL
);

CREATE TABLE printers_seen (
    tenant  text COLLATE "C" NOT NULL,
    printer text COLLATE "C" NOT NULL,
    doc     jsonb NOT NULL,
    PRIMARY KEY (tenant, printer)
);

-- One telemetry sample per reading (reading time to the millisecond).
CREATE TABLE readings (
    tenant  text COLLATE "C" NOT NULL,
    printer text COLLATE "C" NOT NULL,
    read_at timestamptz NOT NULL,
    doc     jsonb NOT NULL,
    PRIMARY KEY (tenant, printer, read_at)
);
