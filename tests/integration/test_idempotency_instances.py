"""One idempotency key raced from two core instances on one database gives one batch."""
import threading

from custody.app import Custody
from tests.support.config import make_config


def test_same_key_from_two_instances_at_once(db_url):
    config = make_config(db_url)
    apps = [Custody(config), Custody(config)]
    try:
        a = apps[0].create_account("a").account_id
        b = apps[0].create_account("b").account_id
        apps[0].adjust_balance("admin", "fund", str(a), "BTC", "100000", True, "test funding")
        results, errors = [], []
        barrier = threading.Barrier(8)

        def go(n):
            barrier.wait()
            for k in range(20):
                try:
                    results.append(apps[n % 2].transfer("exchange", f"key-{k}", str(a), str(b), "BTC", "7", ""))
                except Exception as exc:  # never: not even a conflict, every request under a key is the same
                    errors.append(exc)

        threads = [threading.Thread(target=go, args=(n,)) for n in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors
        assert len({r.batch_id for r in results}) == 20
        _, (btc, *_) = apps[1].get_balances(str(b))
        assert btc.available == 20 * 7
    finally:
        for app in apps:
            app.close()
