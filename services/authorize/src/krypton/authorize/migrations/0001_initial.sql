-- Authorize schema, v1: the access policy's source of truth.
--
-- Patients are keyed by their platform key, "INS:<ins>" (or "IPP:<structure>:<id>" when no
-- INS is known), the same key the index puts on studies. Every change is written with an
-- outbox row in the same transaction; krypton.authorize.outbox publishes the outbox on
-- JetStream, so a committed change is never lost and never published uncommitted.

CREATE TABLE authz.structures (
    finess      text PRIMARY KEY,
    name        text NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE authz.professionals (
    sub         text PRIMARY KEY,           -- IDNPS (8 + RPPS): the token subject
    rpps        text,
    name        text,
    profession  text,                       -- TRE_G15 code ("10" physician)
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE authz.memberships (
    professional text NOT NULL REFERENCES authz.professionals (sub) ON DELETE CASCADE,
    structure    text NOT NULL,
    since        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (professional, structure)
);

CREATE TABLE authz.patients (
    ins         text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- A structure's local identifiers of a patient: lets a structure name a patient by IPP, and
-- extends an opposition to studies that carry no INS.
CREATE TABLE authz.patient_ipps (
    structure   text NOT NULL,
    ipp         text NOT NULL,
    ins         text NOT NULL REFERENCES authz.patients (ins) ON DELETE CASCADE,
    PRIMARY KEY (structure, ipp)
);
CREATE INDEX patient_ipps_ins_idx ON authz.patient_ipps (ins);

CREATE TABLE authz.care_relationships (
    id            uuid PRIMARY KEY,
    actor_sub     text NOT NULL,              -- the professional
    patient_key   text NOT NULL,
    basis         text NOT NULL,              -- CareBasisValues
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    declared_by   text NOT NULL,              -- sub of the declaring system or professional
    structure     text,                       -- declaring structure (FINESS)
    study_uid     text,                       -- the exam a derived relationship comes from
    attestation   text,                       -- self-attested: what was attested
    ended_at      timestamptz,
    ended_by      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (ends_at > starts_at)
);
-- Decisions: does this professional take care of this patient now?
CREATE INDEX care_actor_patient_idx ON authz.care_relationships (actor_sub, patient_key);
CREATE INDEX care_patient_idx ON authz.care_relationships (patient_key);

CREATE TABLE authz.share_codes (
    id              uuid PRIMARY KEY,
    lookup          text NOT NULL,            -- public first group of the code (not secret)
    secret_hash     bytea NOT NULL,           -- HMAC-SHA256(pepper, secret part)
    patient_key     text NOT NULL,
    scope           text NOT NULL,            -- ShareScopeValues
    study_uid       text,
    valid_from      timestamptz NOT NULL,
    valid_until     timestamptz NOT NULL,
    created_by      text NOT NULL,
    created_by_role text NOT NULL,
    structure       text,                     -- creating structure, when not the patient
    created_at      timestamptz NOT NULL DEFAULT now(),
    bound_to        text,                     -- first professional who redeemed it
    bound_at        timestamptz,
    revoked_at      timestamptz,
    revoked_by      text,
    failed_attempts integer NOT NULL DEFAULT 0,
    locked_at       timestamptz,
    CHECK (valid_until > valid_from),
    CHECK ((scope = 'study') = (study_uid IS NOT NULL))
);
CREATE INDEX share_codes_lookup_idx ON authz.share_codes (lookup);
CREATE INDEX share_codes_patient_idx ON authz.share_codes (patient_key);
CREATE INDEX share_codes_bound_idx ON authz.share_codes (bound_to, patient_key)
    WHERE bound_to IS NOT NULL;

-- Failed redemptions, for the per-actor throttle (a sliding window).
CREATE TABLE authz.redeem_failures (
    actor_sub   text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX redeem_failures_actor_idx ON authz.redeem_failures (actor_sub, at);

-- Versioned: setting adds a row, lifting closes it; at most one open row per patient.
CREATE TABLE authz.oppositions (
    id                  uuid PRIMARY KEY,
    patient_key         text NOT NULL,
    set_at              timestamptz NOT NULL DEFAULT now(),
    set_by              text NOT NULL,
    structure           text,                -- structure that collected it (NULL: online)
    note                text,
    lifted_at           timestamptz,
    lifted_by           text,
    lifted_by_structure text
);
CREATE UNIQUE INDEX oppositions_active_idx ON authz.oppositions (patient_key)
    WHERE lifted_at IS NULL;
CREATE INDEX oppositions_patient_idx ON authz.oppositions (patient_key, set_at);

CREATE TABLE authz.break_glass (
    id              uuid PRIMARY KEY,
    actor_sub       text NOT NULL,
    actor_structure text,
    patient_key     text NOT NULL,
    study_uid       text,
    justification   text NOT NULL,
    opened_at       timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    reviewed_at     timestamptz,
    reviewed_by     text,
    review_note     text
);
CREATE INDEX break_glass_actor_idx ON authz.break_glass (actor_sub, patient_key);
CREATE INDEX break_glass_review_idx ON authz.break_glass (opened_at) WHERE reviewed_at IS NULL;

-- Transactional outbox: one row per event, published in id order then marked.
CREATE TABLE authz.outbox (
    id            bigserial PRIMARY KEY,
    subject       text NOT NULL,
    payload       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_pending_idx ON authz.outbox (id) WHERE published_at IS NULL;
