"""Sub-pixel phases in one place (`hovernet.infer.phased`): each image's phases go to the network
in order and come back as the image's merged maps, for tile mode, slide mode and
`predict_phases_many` alike."""

from __future__ import annotations

import numpy as np
import pytest

from hovernet.errors import HoverNetError
from hovernet.infer.maps import PredMaps, merge_phase_maps
from hovernet.infer.phased import PhasedStream, Phases, phased_stream


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (40 + 6 * i, 52, 3), np.uint8) for i in range(3)]


def _network(items):
    """A stand-in network: (key, input) -> maps made from the input's pixels."""
    for key, x in items:
        channels = np.stack([x[..., 0] / 255, x[..., 1] / 128 - 1, x[..., 2] / 128 - 1], -1)
        yield key, x, PredMaps(channels.astype(np.float32), None)


def test_one_phase_as_it_is_gives_the_networks_maps_of_the_image_itself():
    images = _images()
    out = list(phased_stream(_network, enumerate(images), Phases()))
    assert [key for key, *_ in out] == [0, 1, 2]
    for (_, image, maps, prob), original in zip(out, images, strict=True):
        assert image is original and prob is None
        ((_, _, direct),) = _network([(0, original)])
        np.testing.assert_array_equal(maps.pred_map, direct.pred_map)


def test_four_phases_are_merged_per_image_in_order():
    images = _images()
    phases = Phases.of(0.5, 4)  # images twice as fine as the network
    assert phases.n == 4 and phases.offsets[0] == (0, 0)
    out = list(phased_stream(_network, enumerate(images), phases))
    assert [key for key, *_ in out] == [0, 1, 2]
    for (_, image, maps, prob), original in zip(out, images, strict=True):
        assert image is original
        each = [m for _, _, m in _network((0, x) for x in phases.inputs(original))]
        assert each[0].pred_map.shape[:2] == phases.network_shape(original.shape)
        expected, fine = merge_phase_maps(each, list(phases.offsets), original.shape)
        np.testing.assert_array_equal(maps.pred_map, expected.pred_map)
        np.testing.assert_array_equal(prob, fine)
        assert prob.shape == original.shape[:2]


def test_the_engines_make_job_sees_only_an_images_last_phase():
    phases = Phases.of(0.5, 2)
    stream = PhasedStream(phases)
    jobs = []

    def make_job(key, image, maps, prob):
        jobs.append((key, image.shape, prob.shape))
        return key, 1

    make = stream.make_job(make_job)
    results = [make(key, x, maps) for key, x, maps in _network(stream.inputs(enumerate(_images())))]
    assert results == [(None, 0), (0, 1), (None, 0), (1, 1), (None, 0), (2, 1)]
    assert [key for key, *_ in jobs] == [0, 1, 2] and jobs[0][1][:2] == jobs[0][2]


def test_phases_are_refused_where_the_images_are_not_finer_than_the_network():
    with pytest.raises(HoverNetError, match="--phases 2"):
        Phases.of(None, 2)
    with pytest.raises(ValueError, match=r"\(0, 0\)"):
        Phases(((1, 1),))
