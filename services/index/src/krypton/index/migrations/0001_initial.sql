-- Index schema, v1: studies / series / instances denormalised for QIDO-RS at 18M studies.
--
-- Every QIDO-returnable attribute is a column (queries never open a blob). Write path:
-- one row per instance, one upsert per touched series and study per batch; aggregates
-- (counts, sizes, modalities) are maintained incrementally by krypton.index.store.
-- Indexes are chosen per query shape (see krypton.index.qido_sql); each one below says which.

CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE index.studies (
    study_uid                   text PRIMARY KEY,
    structure                   text NOT NULL,          -- FINESS of the producing structure
    patient_key                 text NOT NULL,          -- INS:<ins> or IPP:<structure>:<id>
    patient_id                  text NOT NULL,
    issuer_of_patient_id        text,
    patient_ins                 text,
    patient_name                text,                   -- DICOM PN string (groups split by =)
    patient_name_search         text,                   -- upper-case, accent-free (store.normalise_pn)
    patient_birth_date          date,
    patient_sex                 text,
    study_date                  date,
    study_time                  time,
    accession_number            text,
    study_id                    text,
    study_description           text,
    referring_physician_name    text,
    referring_physician_search  text,                   -- as patient_name_search, not indexed
    modalities                  text[] NOT NULL DEFAULT '{}',
    num_series                  integer NOT NULL DEFAULT 0,
    num_instances               integer NOT NULL DEFAULT 0,
    size_bytes                  bigint NOT NULL DEFAULT 0,
    timezone_offset             text,
    specific_character_set      text,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 85);  -- room for HOT updates: counters change, indexed columns rarely do

-- Default listing (admin) and every search without a selective key: index order = result order.
CREATE INDEX studies_date_idx
    ON index.studies (study_date DESC NULLS LAST, study_time DESC NULLS LAST, study_uid);
-- Producer / professional listings (access predicate structure = ...), same order.
CREATE INDEX studies_structure_date_idx
    ON index.studies (structure, study_date DESC NULLS LAST, study_time DESC NULLS LAST, study_uid);
-- Patient lookups: PatientID, platform patient key, INS (also the patient access predicate).
CREATE INDEX studies_patient_id_idx ON index.studies (patient_id);
CREATE INDEX studies_patient_key_idx ON index.studies (patient_key);
CREATE INDEX studies_patient_ins_idx ON index.studies (patient_ins) WHERE patient_ins IS NOT NULL;
CREATE INDEX studies_accession_idx
    ON index.studies (accession_number) WHERE accession_number IS NOT NULL;
-- PatientName: equality, wildcards (LIKE) and fuzzy word-prefix (regex) all use trigrams.
CREATE INDEX studies_patient_name_trgm_idx
    ON index.studies USING gin (patient_name_search gin_trgm_ops);
-- ModalitiesInStudy (@> / &&) for rare modalities; common ones are better served by date order.
CREATE INDEX studies_modalities_idx ON index.studies USING gin (modalities);

CREATE TABLE index.series (
    series_uid                      text PRIMARY KEY,
    study_uid                       text NOT NULL,
    structure                       text NOT NULL,
    modality                        text,
    series_number                   integer,
    series_description              text,
    series_date                     date,
    series_time                     time,
    body_part_examined              text,
    pps_start_date                  date,
    pps_start_time                  time,
    institution_name                text,
    station_name                    text,
    manufacturer                    text,
    num_instances                   integer NOT NULL DEFAULT 0,
    size_bytes                      bigint NOT NULL DEFAULT 0,
    created_at                      timestamptz NOT NULL DEFAULT now(),
    updated_at                      timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 85);

-- Series of a study in result order (also the join from studies for cross-study searches).
CREATE INDEX series_study_idx ON index.series (study_uid, series_number, series_uid);

CREATE TABLE index.instances (
    sop_instance_uid            text PRIMARY KEY,
    series_uid                  text NOT NULL,
    study_uid                   text NOT NULL,
    structure                   text NOT NULL,
    sop_class_uid               text NOT NULL,
    transfer_syntax_uid         text NOT NULL,
    instance_number             integer,
    rows                        integer,
    columns                     integer,
    bits_allocated              integer,
    number_of_frames            integer,
    photometric_interpretation  text,
    content_date                date,
    content_time                time,
    object_key                  text NOT NULL,
    sha256                      text NOT NULL,
    size                        bigint NOT NULL,
    pixel_data_offset           bigint,
    stored_at                   timestamptz NOT NULL,
    indexed_at                  timestamptz NOT NULL DEFAULT now()
);

-- Instances of a series in result order. Instances of a study are reached through
-- series_study_idx then this index, so the largest table carries one secondary index only.
CREATE INDEX instances_series_idx ON index.instances (series_uid, instance_number, sop_instance_uid);
