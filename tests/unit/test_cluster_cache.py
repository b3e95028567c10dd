"""The cluster cache: by the job a cluster names; deletions are not undone by late news."""

from __future__ import annotations

from job_operator.cache import ClusterCache
from tests.unit.factories import make_executor

KEY = ("default", "nightly")


def test_clusters_are_found_by_their_job_and_a_change_of_phase_is_news() -> None:
    cache = ClusterCache()
    assert cache.remember(make_executor("a", attempt=1), 1.0)
    assert cache.remember(make_executor("b", attempt=2, uid="ec-uid-2"), 1.0)
    assert [c.metadata.name for c in cache.of(KEY)] == ["a", "b"]
    same = make_executor("a", attempt=1)
    assert not cache.remember(same, 2.0)  # nothing a reconcile reads changed
    running = make_executor("a", attempt=1, phase="Running").model_copy(
        update={"metadata": same.metadata.model_copy(update={"resource_version": "7"})}
    )
    assert cache.remember(running, 2.0)
    assert cache.of(("default", "other")) == []


def test_a_late_event_or_list_does_not_bring_a_deleted_cluster_back() -> None:
    cache = ClusterCache()
    cluster = make_executor("a", attempt=1)
    assert cache.remember(cluster, 0.5)
    assert cache.forget(KEY, "a", 2.0)  # deleted after a list began at 1.0
    assert not cache.remember(cluster, 1.0)  # that list's page, processed late
    assert cache.of(KEY) == []
    cache.prune(set(), 1.0, None)  # the list begun before the deletion confirms nothing
    assert not cache.remember(cluster, 1.0)
    cache.prune(set(), 3.0, None)  # one begun after it has confirmed it: forgotten
    assert cache.remember(cluster, 3.5)


def test_a_list_drops_what_it_lacks_unless_seen_since_it_began() -> None:
    cache = ClusterCache()
    cache.remember(make_executor("old", attempt=1), 1.0)
    cache.remember(make_executor("new", attempt=2, uid="ec-uid-2"), 5.0)  # after the list
    assert cache.prune(set(), 2.0, None) == {KEY}
    assert [c.metadata.name for c in cache.of(KEY)] == ["new"]
    assert cache.prune(set(), 2.0, "elsewhere") == set()  # another namespace's list
