from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('studies', '0009_study_datasets'),
    ]

    operations = [
        migrations.AddField(
            model_name='study',
            name='recruitment_window_s',
            field=models.PositiveIntegerField(default=604800),
        ),
        migrations.AddField(
            model_name='study',
            name='recruitment_deadline',
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
