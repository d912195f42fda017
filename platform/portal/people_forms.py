"""Forms for people and accounts: invitations, roles, passwords, API tokens, the first run, and a
hospital's declared limits."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import password_validators_help_texts, validate_password
from django.core.exceptions import ValidationError

from consortia.models import Consortium, Hospital, Membership
from fedproto.privacy import MAX_EPSILON
from fedproto.specs import MODEL_TYPES
from fedproto.study import MAX_ROUNDS

Role = Membership.Role


class _HospitalChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj):
        return obj.name


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)
    hospital = _HospitalChoice(queryset=Hospital.objects.none(), required=False, empty_label="— (not a hospital admin)",
                               help_text="Hospital admins only: the hospital they act for.")

    def __init__(self, *args, consortium: Consortium, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["hospital"].queryset = Hospital.objects.filter(consortium=consortium).order_by("name")

    def clean(self):
        d = super().clean()
        role, hospital = d.get("role"), d.get("hospital")
        if role == Role.HOSPITAL_ADMIN and hospital is None:
            self.add_error("hospital", "choose the hospital this hospital admin acts for")
        elif role and role != Role.HOSPITAL_ADMIN and hospital is not None:
            self.add_error("hospital", "only hospital admins are bound to a hospital: leave it empty for this role")
        return d


class InviteForm(MemberRoleForm):
    full_name = forms.CharField(label="Name", max_length=150, help_text="As it will be shown in the portal and the audit trail.")
    email = forms.EmailField(label="E-mail", max_length=254, help_text="The invitation with a one-time link goes here.")

    field_order = ["full_name", "email", "role", "hospital"]


class PasswordForm(forms.Form):
    password1 = forms.CharField(label="New password", widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
                                strip=False, help_text=" ".join(password_validators_help_texts()))
    password2 = forms.CharField(label="New password again", strip=False,
                                widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    def __init__(self, *args, user=None, **kwargs):
        self.user = user
        super().__init__(*args, **kwargs)

    def clean(self):
        d = super().clean()
        p1, p2 = d.get("password1"), d.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", "the two passwords differ")
        elif p1:
            try:
                validate_password(p1, user=self.user)
            except ValidationError as exc:
                self.add_error("password1", exc)
        return d


class ResetRequestForm(forms.Form):
    email = forms.EmailField(label="E-mail", max_length=254,
                             widget=forms.EmailInput(attrs={"autocomplete": "email"}))


class ApiTokenForm(forms.Form):
    EXPIRY = [("30", "30 days"), ("90", "90 days"), ("365", "1 year"), ("never", "never")]
    name = forms.CharField(max_length=100, help_text="What uses it, e.g. 'analysis notebook on my laptop'.")
    expires = forms.ChoiceField(choices=EXPIRY, initial="90")

    def days(self) -> int | None:
        v = self.cleaned_data["expires"]
        return None if v == "never" else int(v)


class SetupForm(forms.Form):
    consortium = forms.CharField(label="Consortium name", max_length=200,
                                 help_text="The group of hospitals working together, e.g. 'Nordic cardiology network'.")
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                                  label="What the consortium is for (optional)")
    full_name = forms.CharField(label="Your name", max_length=150)
    email = forms.EmailField(label="Your e-mail", max_length=254, help_text="Also your username.")
    password1 = PasswordForm.base_fields["password1"]
    password2 = PasswordForm.base_fields["password2"]
    code = forms.CharField(label="Setup code", required=False, max_length=200,
                           help_text="The FEDPLATFORM_SETUP_CODE the platform was started with.")

    def __init__(self, *args, need_code: bool, **kwargs):
        super().__init__(*args, **kwargs)
        if not need_code:
            del self.fields["code"]

    def clean(self):
        d = super().clean()
        email = d.get("email", "")
        if email and get_user_model().objects.filter(username__iexact=email).exists():
            self.add_error("email", "an account with this e-mail already exists")
        if d.get("consortium") and Consortium.objects.filter(name__iexact=d["consortium"].strip()).exists():
            self.add_error("consortium", "a consortium with this name already exists")
        p1, p2 = d.get("password1"), d.get("password2")
        if p1 and p2 and p1 != p2:
            self.add_error("password2", "the two passwords differ")
        elif p1:
            try:
                validate_password(p1, user=get_user_model()(username=email, email=email))
            except ValidationError as exc:
                self.add_error("password1", exc)
        return d


class HospitalLimitsForm(forms.Form):
    max_epsilon = forms.FloatField(required=False, min_value=1e-6, max_value=MAX_EPSILON, label="Max ε per study",
                                   help_text="Empty: not declared.")
    max_rounds = forms.IntegerField(required=False, min_value=1, max_value=MAX_ROUNDS, label="Max rounds per study",
                                    help_text="Empty: not declared.")
    allowed_models = forms.MultipleChoiceField(required=False, choices=[(k, k) for k in MODEL_TYPES],
                                               widget=forms.CheckboxSelectMultiple, label="Allowed model types",
                                               help_text="None ticked: any model type.")
