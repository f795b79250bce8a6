-- Communities in the access projection (krypton.index.access, authorize's communities).
--
-- A grant is held either by one professional (actor_sub) or by a community (community_id):
-- a patient's file shared with a tumour board is one grant of the board, and every current
-- member sees through it. Membership is its own projection, so a professional joining or
-- leaving changes one row, not one grant per shared patient, and the access predicate stays
-- one SQL condition (krypton.index.qido_sql.access_predicate).

ALTER TABLE index.access_grants
    ALTER COLUMN actor_sub DROP NOT NULL,
    ADD COLUMN community_id text,
    ADD CONSTRAINT access_grants_one_holder CHECK ((actor_sub IS NULL) <> (community_id IS NULL));

-- The predicate's lookups of the grants of the communities the actor belongs to.
CREATE INDEX access_grants_community_idx ON index.access_grants (community_id, patient_key)
    INCLUDE (study_uid, valid_from, valid_until) WHERE active AND community_id IS NOT NULL;

-- `version` is authorize's outbox sequence: an older change of a membership is ignored.
CREATE TABLE index.community_members (
    community_id text NOT NULL,
    actor_sub    text NOT NULL,
    active       boolean NOT NULL,
    version      bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (community_id, actor_sub)
);
-- The communities an actor currently belongs to (read once per statement).
CREATE INDEX community_members_actor_idx ON index.community_members (actor_sub)
    INCLUDE (community_id) WHERE active;
