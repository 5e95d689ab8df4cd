-- pg_segment 0.1.0 -> 0.2.0
\echo Use "ALTER EXTENSION pg_segment UPDATE TO '0.2.0'" to load this file. \quit

-- No catalog changes yet: 0.2.0 is the development version after the 0.1.0 release. Every
-- change to the extension's objects (functions added, removed or changed, tables and views of
-- schema segment) goes here as it is made; `make test` installs 0.1.0, runs this script and
-- checks that models, assignments and live mode survive (tests/client/upgrade.sh), and a unit
-- test fails when a released version has no upgrade path to the current one.
