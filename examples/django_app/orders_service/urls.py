from __future__ import annotations

from django.urls import path

from orders_service import views
from scalekit.contrib.django import health_view

urlpatterns = [
    path("orders", views.orders),
    path("orders/import", views.import_orders),
    path("orders/stats", views.stats),
    path("orders/<int:order_id>", views.order),
    path("health", health_view),
]
