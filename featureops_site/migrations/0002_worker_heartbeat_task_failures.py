"""Worker heartbeats and task failure counts (featureops_site/models.py): operational rows, not audited."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('featureops_site', '0001_cache_table'),
    ]

    operations = [
        migrations.CreateModel(
            name='TaskFailureCount',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('task', models.CharField(max_length=255, unique=True)),
                ('failures', models.PositiveBigIntegerField(default=0)),
                ('last_failed_at', models.DateTimeField()),
                ('last_error', models.CharField(blank=True, max_length=255)),
            ],
            options={
                'ordering': ['task'],
            },
        ),
        migrations.CreateModel(
            name='WorkerHeartbeat',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('hostname', models.CharField(max_length=255, unique=True)),
                ('queues', models.JSONField(default=list)),
                ('pid', models.PositiveIntegerField()),
                ('started_at', models.DateTimeField()),
                ('last_seen', models.DateTimeField()),
                ('stopped_at', models.DateTimeField(blank=True, null=True)),
            ],
            options={
                'ordering': ['hostname'],
            },
        ),
    ]
