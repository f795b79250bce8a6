-- Fuzzy PatientName search (fuzzymatching=true) at 18M studies.
--
-- The rule (krypton.index.qido_sql): every word of the query is the prefix of a word of the
-- name. Trigrams answer that badly for the common case "MARTI JEA": every trigram of a short,
-- common prefix is in a large share of the names (JEA in about a tenth), so the trigram scan
-- reads and intersects posting lists of millions of rows (42 ms of SQL at 18M studies).
--
-- This index holds, for each study, the prefixes (2 to 12 letters) of each word of its
-- normalised name, twice: as they are ("MARTI"), for searches over every structure (admin),
-- and behind the producing structure ("330781196:MARTI"), for a structure's own studies (a
-- producer, a professional's own structure). A query is the intersection of one posting list
-- per query word (each cut to 12 letters); GIN reads such an intersection in time linear in
-- the lists, so the structure's own lists (1/116th of the region's on average) are what make
-- a structure's name search cheap. The per-word regular expressions still decide (words of
-- one letter or of more than 12, exact semantics).

CREATE OR REPLACE FUNCTION index.name_keys(structure text, name text) RETURNS text[]
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN ARRAY(
        SELECT k
          FROM unnest(string_to_array(translate(name, '^', ' '), ' ')) AS w,
               generate_series(2, least(length(w), 12)) AS n,
               LATERAL (VALUES (left(w, n)), (structure || ':' || left(w, n))) AS keys (k)
    );

-- Building it takes long on a large archive (22 min and 2.0 GB for 18M studies on 2 busy cores) and
-- blocks writes to the studies meanwhile: on a live platform, create the function and
-- `CREATE INDEX CONCURRENTLY studies_name_keys_idx ...` by hand first; this then skips it.
CREATE INDEX IF NOT EXISTS studies_name_keys_idx
    ON index.studies USING gin (index.name_keys(structure, patient_name_search));
