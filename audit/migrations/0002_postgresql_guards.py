"""PostgreSQL only: a trigger that refuses UPDATE, DELETE and TRUNCATE on the audit table,
and trigram indexes for the explorer's free-text search."""

from django.db import migrations

FORWARD = [
    """
    CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger AS $$
    BEGIN
        RAISE EXCEPTION 'audit_auditevent is append-only: % refused', TG_OP
            USING ERRCODE = 'insufficient_privilege';
    END;
    $$ LANGUAGE plpgsql;
    """,
    """
    CREATE TRIGGER audit_event_no_update_delete
        BEFORE UPDATE OR DELETE ON audit_auditevent
        FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
    """,
    """
    CREATE TRIGGER audit_event_no_truncate
        BEFORE TRUNCATE ON audit_auditevent
        FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only();
    """,
    "CREATE EXTENSION IF NOT EXISTS pg_trgm;",
    "CREATE INDEX audit_summary_trgm ON audit_auditevent USING gin (UPPER(summary) gin_trgm_ops);",
    "CREATE INDEX audit_reason_trgm ON audit_auditevent USING gin (UPPER(reason) gin_trgm_ops);",
]
BACKWARD = [
    "DROP INDEX IF EXISTS audit_reason_trgm;",
    "DROP INDEX IF EXISTS audit_summary_trgm;",
    "DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent;",
    "DROP TRIGGER IF EXISTS audit_event_no_update_delete ON audit_auditevent;",
    "DROP FUNCTION IF EXISTS audit_event_append_only();",
]


def _run(statements):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor != "postgresql":
            return  # SQLite (the embedded default) relies on the model's refusal
        for statement in statements:
            schema_editor.execute(statement, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [migrations.RunPython(_run(FORWARD), _run(BACKWARD))]
