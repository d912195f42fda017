# Merges the three 0004 migrations written in parallel (late/reused spends, release resolution, platform heartbeat).

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('studies', '0004_platform_heartbeat'),
        ('studies', '0004_privacyspend_late_reuses'),
        ('studies', '0004_release_resolution'),
    ]

    operations = [
    ]
