-- Fuzzy PatientName search (fuzzymatching=true) at 18M studies.
--
-- The rule (krypton.index.qido_sql): every word of the query is the prefix of a word of the
-- name. Trigrams answer that badly for the common case "MARTI JEA": every trigram of a short,
-- common prefix is in a large share of the names (JEA in about a tenth), so the trigram scan
-- reads and intersects posting lists of millions of rows (42 ms of SQL at 18M studies).
-- This index holds, for each study, the prefixes (2 to 12 letters) of each word of the
-- normalised name, so a query is the intersection of one posting list per query word (each
-- cut to 12 letters), read by GIN's AND scan; the per-word regular expressions still decide
-- (words of one letter or of more than 12, exact semantics).

CREATE FUNCTION index.name_prefixes(name text) RETURNS text[]
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN ARRAY(
        SELECT DISTINCT left(w, n)
          FROM unnest(regexp_split_to_array(name, '[ ^]+')) AS w,
               generate_series(2, least(length(w), 12)) AS n
    );

CREATE INDEX studies_name_prefix_idx
    ON index.studies USING gin (index.name_prefixes(patient_name_search));
