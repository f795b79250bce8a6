-- Ingest owns the canonical objects: which SOP instance lives where, with which content, and the
-- verdict on every staged upload (so a redelivered upload gets the same answer).
create table ingest.objects (
    sop_instance_uid text primary key,
    sha256           text not null,
    object_key       text not null,
    structure        text not null,
    study_uid        text not null,
    size             bigint not null,
    event            bytea not null,          -- the InstanceStored event, to republish on recovery
    stored_at        timestamptz not null default now()
);

-- A study belongs to the structure that produced it and to one patient: another structure may
-- not add instances to it, and an instance of another patient may not join it.
create table ingest.studies (
    study_uid   text primary key,
    structure   text not null,
    patient_key text not null,
    created_at  timestamptz not null default now()
);

create table ingest.uploads (
    staging_key      text primary key,
    outcome          text not null check (outcome in ('stored', 'duplicate', 'rejected')),
    sop_instance_uid text,
    sop_class_uid    text,
    study_uid        text,
    series_uid       text,
    failure_code     integer,
    reason           text,
    processed_at     timestamptz not null default now()
);
create index uploads_processed_at on ingest.uploads (processed_at);

create table ingest.quarantine (
    id               bigserial primary key,
    quarantine_key   text not null unique,
    structure        text not null,
    sha256           text not null,
    size             bigint not null,
    failure_code     integer not null,
    reason           text not null,
    sop_instance_uid text,
    study_uid        text,
    actor_sub        text not null,
    received_at      timestamptz not null,
    rejected_at      timestamptz not null default now()
);
create index quarantine_structure on ingest.quarantine (structure, rejected_at desc);
