"""The hashed record of an event's data becomes its canonical JSON text (data_canonical), and
repeated events get a tally table (audit/repeated.py).

Existing events keep data_canonical NULL and are not touched (the table is append-only: a plain
ADD COLUMN rewrites no row and fires no row trigger). They were hashed over the canonical JSON of
their data and still verify that way (audit.chain.legacy_data_text)."""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0002_append_only_trigger'),
    ]

    operations = [
        migrations.AddField(
            model_name='auditevent',
            name='data_canonical',
            field=models.TextField(blank=True, editable=False, null=True),
        ),
        migrations.CreateModel(
            name='AuditTally',
            fields=[
                ('key', models.CharField(max_length=300, primary_key=True, serialize=False)),
                ('window_end', models.DateTimeField(blank=True, null=True)),
                ('count', models.PositiveIntegerField(default=0)),
                ('first_at', models.DateTimeField(blank=True, null=True)),
                ('last_at', models.DateTimeField(blank=True, null=True)),
                ('pending', models.TextField(blank=True, default='')),
            ],
            options={
                'indexes': [models.Index(fields=['window_end'], name='audit_tally_window_end')],
            },
        ),
    ]
