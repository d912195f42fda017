"""What every portal page knows about its user: the menu their roles allow (studies.access)."""

from consortia.people import display_name
from studies import access


def portal(request):
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return {"menu": access.menu_for(user) if user is not None else None}
    return {"menu": access.menu_for(user), "user_display_name": display_name(user)}
