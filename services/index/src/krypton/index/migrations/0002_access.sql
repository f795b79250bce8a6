-- Access projection: what the access predicate (krypton.index.qido_sql.access_predicate)
-- needs beyond a study's own columns, kept from authorize's policy.changed.* events.
--
-- A grant lets actor_sub see the studies of patient_key (only study_uid when set) while
-- valid_from <= now() < valid_until and active; expiry needs no event. An opposition row per
-- patient key hides that patient's studies from everyone outside the producing structure.
-- `version` is authorize's outbox sequence: an event older than the row is ignored, so
-- redelivery and reordering across replicas never resurrect a revoked grant.

CREATE TABLE index.access_grants (
    grant_id     text PRIMARY KEY,           -- care:<uuid>, code:<uuid>, btg:<uuid>
    actor_sub    text NOT NULL,
    patient_key  text NOT NULL,
    study_uid    text,                       -- NULL: every study of the patient
    valid_from   timestamptz NOT NULL,
    valid_until  timestamptz,
    basis        text NOT NULL,
    active       boolean NOT NULL,
    version      bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- The predicate's lookups: the actor's live grants, and one (actor, patient) pair per study.
CREATE INDEX access_grants_actor_idx ON index.access_grants (actor_sub, patient_key)
    INCLUDE (study_uid, valid_from, valid_until) WHERE active;

CREATE TABLE index.oppositions (
    patient_key    text PRIMARY KEY,
    opposition_id  text NOT NULL,
    active         boolean NOT NULL,
    version        bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
