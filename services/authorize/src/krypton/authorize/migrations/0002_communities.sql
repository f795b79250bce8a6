-- Communities: named groups of professionals (e.g. a tumour board, "réunion de concertation
-- pluridisciplinaire") with which a structure shares a patient's file. Every current member
-- sees the patient's studies while the share is live, unless the patient opposes sharing.
--
-- Changes of one community (its members and its shares) are serialised by an advisory lock
-- on the community, so the versions of their outbox events grow in commit order.

CREATE TABLE authz.communities (
    id          text PRIMARY KEY,             -- chosen by the admin, e.g. "rcp-onco-bordeaux"
    name        text NOT NULL,
    structure   text,                         -- owning structure (FINESS): manages the members
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per (community, professional); removing a member closes the row, adding them
-- again reopens it (the audit trail keeps the history).
CREATE TABLE authz.community_members (
    community_id text NOT NULL REFERENCES authz.communities (id) ON DELETE CASCADE,
    actor_sub    text NOT NULL,               -- IDNPS: the professional's token subject
    added_at     timestamptz NOT NULL DEFAULT now(),
    added_by     text NOT NULL,
    removed_at   timestamptz,
    removed_by   text,
    PRIMARY KEY (community_id, actor_sub)
);
-- Decisions: the communities a professional currently belongs to.
CREATE INDEX community_members_actor_idx ON authz.community_members (actor_sub)
    WHERE removed_at IS NULL;

CREATE TABLE authz.community_shares (
    id            uuid PRIMARY KEY,
    community_id  text NOT NULL REFERENCES authz.communities (id) ON DELETE CASCADE,
    patient_key   text NOT NULL,
    valid_from    timestamptz NOT NULL,
    valid_until   timestamptz NOT NULL,
    shared_by     text NOT NULL,              -- sub of the sharing system or admin
    structure     text,                       -- sharing structure (FINESS)
    created_at    timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz,
    ended_by      text,
    CHECK (valid_until > valid_from)
);
CREATE INDEX community_shares_patient_idx ON authz.community_shares (patient_key, community_id);
CREATE INDEX community_shares_community_idx ON authz.community_shares (community_id);
