"""Portal views, one module per page group: login, dashboard, hospitals, studies, inbox.

Views are thin: who may see and do what is decided by studies.access (object-level checks);
writes go through the service functions (each writes its audit event)."""
