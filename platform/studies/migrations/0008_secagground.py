from django.db import migrations, models
import django.db.models.deletion


class Migration(migrations.Migration):

    dependencies = [
        ('studies', '0007_study_privacy_mode'),
    ]

    operations = [
        migrations.CreateModel(
            name='SecAggRound',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('setup', models.JSONField()),
                ('adverts', models.JSONField(default=dict)),
                ('u0', models.JSONField(blank=True, null=True)),
                ('bundles', models.JSONField(default=dict)),
                ('u1', models.JSONField(blank=True, null=True)),
                ('u2', models.JSONField(blank=True, null=True)),
                ('responses', models.JSONField(default=dict)),
                ('correction_path', models.CharField(blank=True, max_length=500)),
                ('correction_sha256', models.CharField(blank=True, max_length=64)),
                ('created_at', models.DateTimeField(auto_now_add=True)),
                ('u0_at', models.DateTimeField(blank=True, null=True)),
                ('u1_at', models.DateTimeField(blank=True, null=True)),
                ('u2_at', models.DateTimeField(blank=True, null=True)),
                ('unmasked_at', models.DateTimeField(blank=True, null=True)),
                ('round', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='secagg', to='studies.round')),
            ],
        ),
    ]
