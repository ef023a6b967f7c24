-- Several instances share the open changes: an instance claims the due ones it steps
-- (claimed_by = its MQTT client id) until claim_until; another instance takes a claim
-- over only after it has run out, and a save by an instance that lost its claim is
-- refused. A report that wakes a claimed change sets rewake, so the save leaves it
-- due at once instead of at the time its stepper computed.
ALTER TABLE changes
    ADD COLUMN claimed_by  text COLLATE "C",
    ADD COLUMN claim_until timestamptz,
    ADD COLUMN rewake      boolean NOT NULL DEFAULT false,
    ADD CHECK ((claimed_by IS NULL) = (claim_until IS NULL));
