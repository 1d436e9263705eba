"""The gateway's database: models, the engine, and migrations."""
