"""Request filters, one concern per file, each ``async def f(request, call_next) -> Response``.

The running order is the explicit list in ``meshkit.proxy.chain``; a filter never
knows its neighbours, only the ``Request``/``Response`` types of ``meshkit.proxy.http``.
"""
