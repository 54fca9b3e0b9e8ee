//! TOML tables: schema, validation with spans, compilation into snapshots, file watch and admin API.
