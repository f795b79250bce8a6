"""Database layer: asyncpg pools and numbered SQL migrations.

Import from the modules: `krypton.db.pool.create_pool`,
`krypton.db.migrations.apply_migrations`, `krypton.db.errors.MigrationError`.
"""
