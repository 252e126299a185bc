"""The table of the default cache (settings.CACHES, DatabaseCache "featureops_cache") when
CACHE_URL is unset: it holds the sign-in throttling state every process must share.

It is made here, not by `createcachetable`, so that `migrate` (make run, CI, deployments and the
test databases) always makes it. The columns are createcachetable's: cache_key (primary key),
value, expires (indexed). Only the database has it: no model state, nothing for
makemigrations to track.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = []

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[
                migrations.CreateModel(
                    name="CacheEntry",
                    fields=[
                        ("cache_key", models.CharField(max_length=255, primary_key=True, serialize=False)),
                        ("value", models.TextField()),
                        ("expires", models.DateTimeField(db_index=True)),
                    ],
                    options={"db_table": "featureops_cache"},
                ),
            ],
            state_operations=[],
        ),
    ]
