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
