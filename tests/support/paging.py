"""Following a paged list RPC (custody/paging.py) to its last page, in tests."""


def every_page(call, request, field: str, metadata) -> tuple[list[int], list]:
    """(the size of each page, every item in order): request is sent again with each
    next_page_token until a reply has none; field names the reply's repeated items."""
    sizes, items = [], []
    while True:
        reply = call(request, metadata=metadata)
        page = list(getattr(reply, field))
        sizes.append(len(page))
        items += page
        if not reply.next_page_token:
            return sizes, items
        request.page_token = reply.next_page_token
