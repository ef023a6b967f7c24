-- Outbound webhooks. An event is inserted in the transaction of the ledger entry it
-- reports, numbered per contract (webhook_seq) and with a pending delivery to every
-- endpoint that wants it. Deliveries are claimed like changes (claimed_by,
-- claim_until), so each is sent by one instance at a time.
CREATE TABLE webhook_endpoints (
    id  text COLLATE "C" PRIMARY KEY,
    doc jsonb NOT NULL
);

CREATE TABLE webhook_seq (
    contract text COLLATE "C" PRIMARY KEY,
    last     bigint NOT NULL CHECK (last > 0)
);

CREATE TABLE webhook_events (
    id       text COLLATE "C" PRIMARY KEY,
    n        bigserial UNIQUE,
    contract text COLLATE "C" NOT NULL,
    seq      bigint NOT NULL CHECK (seq > 0),
    doc      jsonb NOT NULL,
    UNIQUE (contract, seq)
);

CREATE TABLE webhook_deliveries (
    endpoint    text COLLATE "C" NOT NULL,
    event_id    text COLLATE "C" NOT NULL REFERENCES webhook_events (id),
    state       text NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    next_at     timestamptz,
    claimed_by  text COLLATE "C",
    claim_until timestamptz,
    doc         jsonb NOT NULL,
    PRIMARY KEY (endpoint, event_id),
    CHECK ((claimed_by IS NULL) = (claim_until IS NULL))
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);
