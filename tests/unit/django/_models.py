"""A model for the router tests: the table is made by the tests (not migrations)."""

from __future__ import annotations

from django.db import models


class Order(models.Model):
    customer = models.CharField(max_length=100)
    amount = models.IntegerField(default=0)

    class Meta:
        app_label = "scalekit"
        db_table = "sk_test_orders"
        managed = False


CREATE_TABLE = (
    "CREATE TABLE IF NOT EXISTS sk_test_orders "
    "(id {serial} PRIMARY KEY, customer VARCHAR(100) NOT NULL, amount INTEGER NOT NULL)"
)
