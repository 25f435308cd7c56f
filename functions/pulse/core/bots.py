"""Known bots: user agents of crawlers, scrapers and headless browsers, as
listed by the ``crawler-user-agents`` package (the maintained list of
github.com/monperrus/crawler-user-agents: ~1,500 patterns, among them
HeadlessChrome, PhantomJS, Puppeteer, Playwright and Selenium). Updating the
package updates the list; Pulse keeps no patterns of its own.

Ingest marks each event (``bot``) from its ``context.user_agent``; stats
leave marked events out unless ``include_bots=true`` (pulse.core.filters).
Matching the list's patterns costs ~230 µs per new user agent (measured here), so answers are
cached by user agent (real traffic repeats a few thousand of them).
"""

from __future__ import annotations

import functools

import crawleruseragents


@functools.lru_cache(maxsize=16384)
def is_bot(user_agent: str) -> bool:
    return bool(user_agent) and crawleruseragents.is_crawler(user_agent)
