"""One model: an order."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=100)
    amount_cents = models.IntegerField()
    created = models.DateTimeField(auto_now_add=True)

    def as_dict(self) -> dict[str, object]:
        return {"id": self.pk, "customer": self.customer, "amount_cents": self.amount_cents}
