"""The README's and docs' page screenshots, from the demo's warehouse (run `make demo` first):

    .venv/bin/python -m quimbi_pipeline_tests.screenshots [--warehouse URL] [--out docs/images]

Writes store-page.png and customer-page.png at 1,400 px, and -phone.png at 390 px, of store_a and its most drifted
customer, after checking each page's layout (quimbi_pipeline_tests/browser.py): a page with cut or overlapping
labels is reported and not written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from quimbi_pipeline.api.launch import local_server
from quimbi_pipeline.settings.locations import data_dir
from quimbi_pipeline.storage import Warehouse, resolve_warehouse_url
from quimbi_pipeline_tests.browser import chromium_page, layout_problems

SIZES = (("", 1400, False), ("-phone", 390, True))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default=None, help="the demo's warehouse (default: QUIMBI_WAREHOUSE_URL, else data/quimbi.sqlite)")
    parser.add_argument("--flags", default=None, help="the flags file the pipeline ran with (default: QUIMBI_FLAGS_FILE, else the demo's)")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--store", default="store_a")
    args = parser.parse_args()
    url = resolve_warehouse_url(args.warehouse)
    flags = args.flags or os.environ.get("QUIMBI_FLAGS_FILE") or str(data_dir() / "demo_flags.yaml")
    chromium = os.environ.get("QUIMBI_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("screenshots need Chromium (apt-get install chromium, or QUIMBI_CHROMIUM=/path)", file=sys.stderr)
        return 2
    wh = Warehouse(url, create=False)
    customer = wh.read_sql("SELECT customer_id FROM customer_drift WHERE store_id = :s AND window_days = 28 ORDER BY overall_drift DESC LIMIT 1",
                           {"s": args.store})["customer_id"].iloc[0]
    wh.dispose()
    failed = 0
    env = {**os.environ, "QUIMBI_FLAGS_FILE": flags} if Path(flags).exists() else None  # the pages show drift only where it is on
    with local_server(url, env=env, args=("--host", "127.0.0.1"), start_timeout_s=90) as server, chromium_page(chromium) as page:
        for name, path in (("store-page", f"/ui/stores/{args.store}"), ("customer-page", f"/ui/stores/{args.store}/customers/{customer}")):
            for suffix, width, mobile in SIZES:
                page.open(server.base + path, width, mobile=mobile)
                problems = layout_problems(page, width)
                target = args.out / f"{name}{suffix}.png"
                if problems:
                    failed += 1
                    print(f"{target}: not written: {'; '.join(problems)}", file=sys.stderr)
                    continue
                page.screenshot(target)
                print(f"{target}: {target.stat().st_size:,} bytes")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
