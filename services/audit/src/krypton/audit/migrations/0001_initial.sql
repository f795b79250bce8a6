-- The audit log: append-only and hash-chained.
--
-- Each record stores the canonical bytes of its event (`body`), the hash of the previous record
-- and its own hash = SHA-256(prev_hash || body). `seq` is gap-free and strictly increasing
-- (assigned under an advisory lock by the writer), `event_id` is unique so a redelivered event
-- never forks the chain. The query columns are copies of fields of `body`; `krypton audit verify`
-- checks them against it, so editing one is detected like editing the body.
CREATE TABLE audit.log (
    seq             bigint PRIMARY KEY CHECK (seq > 0),
    event_id        uuid NOT NULL UNIQUE,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    event_type      text NOT NULL,
    outcome         text NOT NULL,
    basis           text NOT NULL,
    actor_sub       text,
    actor_structure text,
    study_uids      text[] NOT NULL DEFAULT '{}',
    patient_keys    text[] NOT NULL DEFAULT '{}',
    body            bytea NOT NULL,
    prev_hash       bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash            bytea NOT NULL CHECK (octet_length(hash) = 32)
);
CREATE INDEX log_occurred_idx ON audit.log (occurred_at);
CREATE INDEX log_actor_idx ON audit.log (actor_sub, seq);
CREATE INDEX log_structure_idx ON audit.log (actor_structure, seq);
CREATE INDEX log_studies_idx ON audit.log USING gin (study_uids);
CREATE INDEX log_patients_idx ON audit.log USING gin (patient_keys);

-- Chain heads at given moments: written periodically and by every purge (the hash of the last
-- record it removed), so the chain stays verifiable after old records are gone.
CREATE TABLE audit.checkpoints (
    seq         bigint PRIMARY KEY,
    hash        bytea NOT NULL CHECK (octet_length(hash) = 32),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    kind        text NOT NULL DEFAULT 'periodic'
);

-- Study -> patient and producing structure, from the INSTANCES stream: lets a patient (by INS)
-- or a structure's DPO find the events that touched their studies even when the emitter knew
-- only study UIDs. A read model, not part of the chain.
CREATE TABLE audit.studies (
    study_uid   text PRIMARY KEY,
    structure   text NOT NULL,
    patient_key text NOT NULL,
    patient_ins text
);
CREATE INDEX studies_ins_idx ON audit.studies (patient_ins) WHERE patient_ins IS NOT NULL;
CREATE INDEX studies_key_idx ON audit.studies (patient_key);
CREATE INDEX studies_structure_idx ON audit.studies (structure);

-- The role the service writes with: it may add records and read them, never change or remove
-- them (purge runs as the schema owner, from `krypton audit purge`).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'krypton_audit_writer') THEN
        CREATE ROLE krypton_audit_writer NOLOGIN;
    END IF;
END
$$;
GRANT krypton_audit_writer TO CURRENT_USER;
GRANT USAGE ON SCHEMA audit TO krypton_audit_writer;
GRANT SELECT, INSERT ON audit.log, audit.checkpoints TO krypton_audit_writer;
GRANT SELECT, INSERT, UPDATE ON audit.studies TO krypton_audit_writer;
