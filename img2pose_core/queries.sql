-- Queries over the output of jobs/annotate.py that stay right across runs (docs/schema.md).
--
-- Every run adds rows: an image processed by three runs has three rows in `images`. These views give
-- its latest state. They need two views of every row of every run, `images` and `faces`:
--
--   * plain Parquet on a local disk: the two views below; run DuckDB in the folder that holds
--     output/, or set the folder first:  SET VARIABLE img2pose_output = '/data/annotations';
--       duckdb -init docs/queries.sql
--   * plain Parquet on object storage, or Iceberg tables: from Python, which registers them and
--     then runs the part of this file from "@latest" on:
--       from img2pose_core.output import open_tables
--       con = open_tables("s3://annotations/img2pose/", s3_endpoint_url=...)          # plain Parquet
--       con = open_tables("s3://annotations/img2pose/", catalog="sqlite:///catalog.db")  # Iceberg

CREATE OR REPLACE VIEW images AS
SELECT * FROM read_parquet(coalesce(getvariable('img2pose_output'), 'output') || '/images/*/*.parquet',
                           union_by_name = true);
CREATE OR REPLACE VIEW faces AS
SELECT * FROM read_parquet(coalesce(getvariable('img2pose_output'), 'output') || '/faces/*/*.parquet',
                           union_by_name = true);

-- @latest
-- latest_images: one row per image, the one of the last run that processed it.
CREATE OR REPLACE VIEW latest_images AS
SELECT * FROM images
QUALIFY row_number() OVER (PARTITION BY image_uri ORDER BY processed_at DESC, run_id DESC) = 1;

-- latest_faces: the faces of those rows, and of no other run.
CREATE OR REPLACE VIEW latest_faces AS
SELECT f.* FROM faces AS f
SEMI JOIN latest_images AS i ON f.image_uri = i.image_uri AND f.run_id = i.run_id;
