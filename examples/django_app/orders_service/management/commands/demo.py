"""``manage.py demo``: migrate, then drive every endpoint once through Django's test client."""

from __future__ import annotations

import json
from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.test import Client


class Command(BaseCommand):
    help = "Drive every endpoint of the orders service once and print what it answered."

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", verbosity=0)
        client = Client()
        created = client.post(
            "/orders", json.dumps({"customer": "ada", "amount_cents": 1250}), "application/json"
        )
        self.stdout.write(f"create: {created.status_code} {created.json()}")
        self.stdout.write(f"  consistency token: {created['X-Scalekit-Consistency']}")
        order_id = created.json()["id"]
        detail = client.get(f"/orders/{order_id}")
        self.stdout.write(f"detail (cached 30 s): {detail.status_code} {detail.json()}")
        rows = [{"customer": f"c{i}", "amount_cents": i} for i in range(50)]
        imported = client.post("/orders/import", json.dumps(rows), "application/json")
        self.stdout.write(f"import: {imported.status_code} {imported.json()}")
        self.stdout.write(f"  RateLimit-Policy: {imported['RateLimit-Policy']}")
        self.stdout.write(f"  RateLimit: {imported['RateLimit']}")
        page = client.get("/orders?limit=10").json()
        second = client.get(f"/orders?limit=10&after={page['next']}").json()
        self.stdout.write(
            f"pages: {[o['id'] for o in page['items']]} then {[o['id'] for o in second['items']]}"
        )
        self.stdout.write(f"stats (async view): {client.get('/orders/stats').json()}")
        health = client.get("/health")
        self.stdout.write(f"health: {health.status_code} {health.json()['status']}")
