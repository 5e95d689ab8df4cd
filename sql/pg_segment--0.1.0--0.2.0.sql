-- pg_segment 0.1.0 -> 0.2.0
\echo Use "ALTER EXTENSION pg_segment UPDATE TO '0.2.0'" to load this file. \quit

-- 0.2.0 is the development version after the 0.1.0 release. Every
-- change to the extension's objects (functions added, removed or changed, tables and views of
-- schema segment) goes here as it is made; `make test` installs 0.1.0, runs this script and
-- checks that models, assignments and live mode survive (tests/client/upgrade.sh), and a unit
-- test fails when a released version has no upgrade path to the current one.

-- _segment_kmeans_benchmark takes the k-means++ seed (make bench compares several starts).
DROP FUNCTION "_segment_kmeans_benchmark"(TEXT, INT, INT);
CREATE  FUNCTION "_segment_kmeans_benchmark"(
	"model" TEXT, /* & str */
	"k" INT, /* i32 */
	"max_iter" INT DEFAULT 300, /* i32 */
	"seed" INT DEFAULT 42 /* i32 */
) RETURNS TABLE (
	"seconds" double precision,  /* f64 */
	"inertia" double precision,  /* f64 */
	"users" bigint,  /* i64 */
	"dims" INT  /* i32 */
)
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'kmeans_benchmark_wrapper';

-- Async live mode appends to the queue (no primary key) from a row trigger written in Rust.
CREATE FUNCTION "_segment_enqueue"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', '_segment_enqueue_wrapper';
REVOKE ALL ON FUNCTION _segment_enqueue() FROM PUBLIC;

-- The order features aggregate takes the local time (hour and weekday computed from it in Rust
-- instead of two extract() per row), checks the amount's finiteness itself, and declares the
-- size of its state (SSPACE) so hash aggregation does not spill after a few thousand users.
DROP AGGREGATE _segment_order_features(timestamptz, float8, int, int8, int, bool, timestamptz, timestamptz, timestamptz, float8[], bool);
DROP FUNCTION "_segment_order_features_sfunc"(internal, timestamptz, float8, INT, bigint, INT, bool, timestamptz, timestamptz, timestamptz, double precision[], bool);
CREATE FUNCTION "_segment_order_features_sfunc"(
	"state" internal,
	"t" timestamp with time zone,
	"local" timestamp,
	"amount" double precision,
	"slot" INT,
	"category_hash" bigint,
	"as_of" timestamp with time zone,
	"cut30" timestamp with time zone,
	"cut90" timestamp with time zone,
	"priors" double precision[],
	"dedupe" bool
) RETURNS internal
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'order_transition_wrapper';
CREATE AGGREGATE _segment_order_features(
    t timestamptz, local timestamp, amount float8, slot int, category_hash int8,
    as_of timestamptz, cut30 timestamptz, cut90 timestamptz, priors float8[], dedupe bool)
(
    SFUNC = _segment_order_features_sfunc,
    STYPE = internal,
    SSPACE = 1024,
    FINALFUNC = _segment_order_features_final,
    COMBINEFUNC = _segment_order_features_combine,
    SERIALFUNC = _segment_order_features_serialize,
    DESERIALFUNC = _segment_order_features_deserialize,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE _segment_order_features(timestamptz, timestamp, float8, int, int8, timestamptz, timestamptz, timestamptz, float8[], bool) IS
    'pg_segment internal: [duplicates, order features...] of one user''s usable orders (NULL without any)';

-- Users tables leave room on each page for HOT updates by live mode (new tables are created so).
DO $fillfactor$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT DISTINCT model FROM segment.models ORDER BY model LOOP
        IF pg_catalog.to_regclass(format('segment.%I', r.model || '_users')) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE segment.%I SET (fillfactor = 90)', r.model || '_users');
            EXECUTE format('ALTER TABLE segment.%I ADD COLUMN IF NOT EXISTS live_tag int8, '
                           'ADD COLUMN IF NOT EXISTS live_orders bytea, ADD COLUMN IF NOT EXISTS live_events bytea, '
                           'SET (toast_tuple_target = 8160)',
                           r.model || '_users');
        END IF;
    END LOOP;
END
$fillfactor$;

-- Backends cache models; writes to the catalog tables tell them to look again.
CREATE FUNCTION "_segment_catalog_changed"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', '_segment_catalog_changed_wrapper';
CREATE TRIGGER models_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON segment.models FOR EACH STATEMENT EXECUTE FUNCTION _segment_catalog_changed();
CREATE TRIGGER live_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON segment.live FOR EACH STATEMENT EXECUTE FUNCTION _segment_catalog_changed();
REVOKE ALL ON FUNCTION _segment_catalog_changed() FROM PUBLIC;

-- Live mode's per-user state (sync INSERTs merge new rows into it instead of re-reading history).
CREATE FUNCTION "_segment_order_rows_sfunc"(
	"state" internal,
	"t" timestamp with time zone,
	"local" timestamp,
	"amount" double precision,
	"slot" INT,
	"category_hash" bigint
) RETURNS internal
IMMUTABLE PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rows_transition_wrapper';

CREATE  FUNCTION "_segment_order_rows_final"(
	"state" internal /* Internal */
) RETURNS bytea /* Vec < u8 > */
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rows_final_wrapper';

CREATE AGGREGATE _segment_order_rows(t timestamptz, local timestamp, amount float8, slot int, category_hash int8)
(
    SFUNC = _segment_order_rows_sfunc,
    STYPE = internal,
    SSPACE = 1024,
    FINALFUNC = _segment_order_rows_final,
    COMBINEFUNC = _segment_order_features_combine,
    SERIALFUNC = _segment_order_features_serialize,
    DESERIALFUNC = _segment_order_features_deserialize,
    PARALLEL = SAFE
);
COMMENT ON AGGREGATE _segment_order_rows(timestamptz, timestamp, float8, int, int8) IS
    'pg_segment internal: one user''s usable orders, sorted, as live mode stores them';

CREATE  FUNCTION "_segment_event_tally"(
	"as_of" timestamp with time zone, /* TimestampWithTimeZone */
	"events" bigint, /* i64 */
	"views" bigint, /* i64 */
	"carts" bigint, /* i64 */
	"searches" bigint, /* i64 */
	"last" timestamp with time zone, /* Option < TimestampWithTimeZone > */
	"pending_t" timestamp with time zone[], /* :: std :: option :: Option < Vec < Option < TimestampWithTimeZone > > > */
	"pending_kind" INT[] /* :: std :: option :: Option < Vec < Option < i32 > > > */
) RETURNS bytea /* Vec < u8 > */
IMMUTABLE PARALLEL SAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'event_tally_wrapper';

CREATE FUNCTION "_segment_live_sync"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', '_segment_live_sync_wrapper';
ALTER FUNCTION _segment_live_sync() SECURITY DEFINER SET search_path = pg_catalog, pg_temp;


-- Every live model's triggers are re-written by the new code (which also drops the queue's
-- primary key): the old async triggers de-duplicated with ON CONFLICT on that key. The trigger
-- functions belong to the models, not to the extension (pg_dump must dump them), so they leave
-- the extension they joined by being created inside this script.
DO $upgrade$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT model, mode FROM segment.live ORDER BY model LOOP
        PERFORM @extschema@.segment_live(r.model, r.mode);
    END LOOP;
    FOR r IN
        SELECT p.oid::regprocedure AS fn
        FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_proc p ON p.oid = d.objid
        WHERE d.classid = 'pg_catalog.pg_proc'::regclass AND d.refclassid = 'pg_catalog.pg_extension'::regclass
          AND d.deptype = 'e' AND p.pronamespace = 'segment'::regnamespace
          AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'pg_segment')
    LOOP
        EXECUTE format('ALTER EXTENSION pg_segment DROP FUNCTION %s', r.fn);
    END LOOP;
END
$upgrade$;

