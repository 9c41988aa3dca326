//! Migrations, applied in order at start-up, each once.
//!
//! A small runner of our own rather than sqlx's `migrate!`: it needs no proc-macro build and
//! works through the `Any` pool on both databases. Several processes may start at once on one
//! PostgreSQL; an advisory lock makes them take turns.

use sqlx::Row;

use crate::{now_ms, Backend, StoreError};

/// (version, name, SQL). Never edit a shipped one: add the next.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "conversations", include_str!("../migrations/0001_conversations.sql")),
    (2, "front_door", include_str!("../migrations/0002_front_door.sql")),
    (3, "branches", include_str!("../migrations/0003_branches.sql")),
    (4, "memories", include_str!("../migrations/0004_memories.sql")),
];

/// Any constant; it names the lock that serialises migrations across processes.
const MIGRATION_LOCK: i64 = 0x7261_7070_6f72;

pub(crate) async fn migrate(pool: &sqlx::AnyPool, backend: Backend) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_lock($1)").bind(MIGRATION_LOCK).execute(&mut *conn).await?;
    }
    let result = apply(&mut conn).await;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *conn)
            .await?;
    }
    result
}

async fn apply(conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
    sqlx::query("CREATE TABLE IF NOT EXISTS rapport_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)").execute(&mut *conn).await?;
    let applied: Vec<i64> = sqlx::query("SELECT version FROM rapport_migrations")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<i64, _>(0))
        .collect::<Result<_, _>>()?;
    let newest_known = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    if let Some(newer) = applied.iter().find(|v| **v > newest_known) {
        return Err(StoreError::Config(format!("the database has migration {newer}, newer than this program knows ({newest_known}); run a newer rapport")));
    }
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        for statement in statements(sql) {
            sqlx::query(&statement).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO rapport_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(*version)
        .bind(*name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(version, name, "applied migration");
    }
    Ok(())
}

/// Splits a migration into statements at the `;` that ends a line, dropping `--` comments.
fn statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in sql.lines() {
        let line = line.split("--").next().unwrap_or("").trim_end();
        if line.trim().is_empty() {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.ends_with(';') {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_migration_splits_into_its_statements() {
        let parts = super::statements(super::MIGRATIONS[0].2);
        assert_eq!(parts.iter().filter(|s| s.starts_with("CREATE TABLE")).count(), 5);
        assert!(parts.iter().all(|s| s.trim_end().ends_with(';') && !s.contains("--")));
    }
}
