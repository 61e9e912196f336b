import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fusemix import metrics_from_ranks, recall_at_k, retrieval_metrics, retrieval_ranks, similarity_ranks


def lavis_report_metrics(scores_i2t: np.ndarray, scores_t2i: np.ndarray, txt2img: list[int], img2txt: list[list[int]]):
    """LAVIS's ``_report_metrics`` logic for COCO/Flickr retrieval, written out as a reference."""
    ranks = np.zeros(scores_i2t.shape[0])
    for index, score in enumerate(scores_i2t):
        inds = np.argsort(score)[::-1]
        rank = 1e20
        for i in img2txt[index]:
            tmp = np.where(inds == i)[0][0]
            if tmp < rank:
                rank = tmp
        ranks[index] = rank
    tr1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    tr5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    tr10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    ranks = np.zeros(scores_t2i.shape[0])
    for index, score in enumerate(scores_t2i):
        inds = np.argsort(score)[::-1]
        ranks[index] = np.where(inds == txt2img[index])[0][0]
    ir1 = 100.0 * len(np.where(ranks < 1)[0]) / len(ranks)
    ir5 = 100.0 * len(np.where(ranks < 5)[0]) / len(ranks)
    ir10 = 100.0 * len(np.where(ranks < 10)[0]) / len(ranks)
    tr_mean, ir_mean = (tr1 + tr5 + tr10) / 3, (ir1 + ir5 + ir10) / 3
    return {
        "txt_r1": tr1, "txt_r5": tr5, "txt_r10": tr10, "txt_r_mean": tr_mean,
        "img_r1": ir1, "img_r5": ir5, "img_r10": ir10, "img_r_mean": ir_mean,
        "r_mean": (tr_mean + ir_mean) / 2,
    }  # fmt: skip


def _same_as_lavis(ours: dict, lavis: dict) -> None:
    pairs = {
        "i2t_R@1": "txt_r1", "i2t_R@5": "txt_r5", "i2t_R@10": "txt_r10", "i2t_mean": "txt_r_mean",
        "t2i_R@1": "img_r1", "t2i_R@5": "img_r5", "t2i_R@10": "img_r10", "t2i_mean": "img_r_mean",
        "mean": "r_mean",
    }  # fmt: skip
    for key, lavis_key in pairs.items():
        assert ours[key] == pytest.approx(lavis[lavis_key], abs=1e-9), key


def _shuffled_captions(num_images: int, per_image: int, rng: np.random.Generator) -> list[int]:
    txt2img = np.repeat(np.arange(num_images), per_image)
    rng.shuffle(txt2img)
    return txt2img.tolist()


@given(st.integers(1, 30), st.integers(1, 5), st.integers(1, 16), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_ranks_equal_lavis_on_the_same_similarity_matrix(num_images, per_image, dim, chunk, seed):
    rng = np.random.default_rng(seed)
    txt2img = _shuffled_captions(num_images, per_image, rng)
    img = torch.from_numpy(rng.standard_normal((num_images, dim)))
    txt = torch.from_numpy(rng.standard_normal((len(txt2img), dim)))
    sim = img @ txt.T
    img2txt = [[t for t, i in enumerate(txt2img) if i == k] for k in range(num_images)]
    lavis = lavis_report_metrics(sim.numpy(), sim.numpy().T, txt2img, img2txt)
    i2t, t2i = similarity_ranks(sim, txt2img, chunk_size=chunk)
    _same_as_lavis(metrics_from_ranks(i2t, t2i), lavis)
    # The embedding path computes the same matrix chunk by chunk.
    _same_as_lavis(retrieval_metrics(img, txt, txt2img, chunk_size=chunk), lavis)


def test_coco_shaped_evaluation_equals_lavis():
    rng = np.random.default_rng(0)
    txt2img = _shuffled_captions(200, 5, rng)
    img = torch.nn.functional.normalize(torch.randn(200, 32, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(img[txt2img] + 0.9 * torch.randn(1000, 32, dtype=torch.float64), dim=1)
    sim = (img @ txt.T).numpy()
    img2txt = [[t for t, i in enumerate(txt2img) if i == k] for k in range(200)]
    ours = retrieval_metrics(img, txt, txt2img, chunk_size=17)
    _same_as_lavis(ours, lavis_report_metrics(sim, sim.T, txt2img, img2txt))
    assert 0 < ours["i2t_R@1"] < 100 and 0 < ours["t2i_R@1"] < 100


def test_chunk_size_does_not_change_the_result():
    img, txt = torch.randn(50, 8), torch.randn(120, 8)
    t2i_index = torch.arange(120) % 50
    base = retrieval_ranks(img, txt, t2i_index, chunk_size=1000)
    for chunk in (1, 3, 49, 50, 51):
        out = retrieval_ranks(img, txt, t2i_index, chunk_size=chunk)
        assert torch.equal(out[0], base[0]) and torch.equal(out[1], base[1])


def test_ties_count_against_the_query_but_tied_positives_do_not():
    # All scores equal: every query gets the worst possible rank.
    sim = torch.zeros(3, 6)
    i2t, t2i = similarity_ranks(sim, [0, 0, 1, 1, 2, 2])
    assert i2t.tolist() == [4, 4, 4]  # 4 negatives tie with the best positive
    assert t2i.tolist() == [2] * 6  # 2 negative images tie with the positive
    # Two captions of one image tied at the top: rank 0, not 1.
    sim = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    i2t, _ = similarity_ranks(sim, [0, 0, 1])
    assert i2t.tolist() == [0, 0]


def test_best_caption_decides_the_image_rank():
    img = torch.tensor([[1.0, 0.0]])
    txt = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.4, 0.6]])
    img2 = torch.cat([img, torch.tensor([[0.0, 1.0]])])
    i2t, t2i = retrieval_ranks(img2, txt, [1, 0, 1])
    assert i2t.tolist() == [0, 0]
    assert t2i.tolist() == [0, 0, 0]


def test_recall_at_k_and_names():
    assert recall_at_k(torch.tensor([0, 1, 2, 3]), ks=(1, 2, 10)) == {1: 25.0, 2: 50.0, 10: 100.0}
    m = metrics_from_ranks(torch.tensor([0, 3]), torch.tensor([0, 0, 5]), ks=(1, 5), names=("a", "t"))
    assert m == {
        "a2t_R@1": 50.0, "a2t_R@5": 100.0, "a2t_mean": 75.0,
        "t2a_R@1": pytest.approx(200 / 3), "t2a_R@5": pytest.approx(200 / 3), "t2a_mean": pytest.approx(200 / 3),
        "mean": pytest.approx((75.0 + 200 / 3) / 2),
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((torch.randn(3, 4), torch.randn(5, 4), [0, 1, 2, 0]), ValueError, "has 4 entries but there are 5 texts"),
        ((torch.randn(3, 4), torch.randn(3, 4), [0, 1, 3]), ValueError, r"indices must lie in \[0, 3\)"),
        ((torch.randn(3, 4), torch.randn(3, 4), [0, 1, -1]), ValueError, "indices must lie"),
        ((torch.randn(3, 4), torch.randn(3, 4), [0.0, 1.0, 2.0]), TypeError, "integer image indices"),
        ((torch.randn(3, 4), torch.randn(3, 4), [0, 1, 1]), ValueError, "have no caption"),
        ((torch.randn(3, 4), torch.randn(3, 5), [0, 1, 2]), ValueError, "text_emb: has dim 5"),
        ((torch.randn(3), torch.randn(3, 4), [0, 1, 2]), ValueError, "image_emb: expected a 2-D"),
        ((torch.randn(0, 4), torch.randn(3, 4), [0, 1, 2]), ValueError, "image_emb: expected at least 1 row"),
        (
            (torch.randn(3, 4), torch.full((3, 4), float("nan")), [0, 1, 2]),
            ValueError,
            "text_emb: contains 12 non-finite",
        ),
        ((torch.randn(3, 4), torch.randn(3, 4), [[0, 1, 2]]), ValueError, "1-D"),
    ],
)
def test_bad_input_is_refused(args, error, match):
    with pytest.raises(error, match=match):
        retrieval_metrics(*args)


def test_bad_ks_and_chunk_are_refused():
    img, txt = torch.randn(2, 3), torch.randn(2, 3)
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(img, txt, [0, 1], ks=(0,))
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(img, txt, [0, 1], ks=())
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(img, txt, [0, 1], chunk_size=0)


def test_names_and_ks_are_checked_before_scoring():
    # Issue 13 item 9: one name twice overwrote a direction; ks=5 and a single name failed without naming them.
    img, txt = torch.eye(3), torch.eye(3)
    with pytest.raises(ValueError, match=r"names: expected two different short names, .*got \('x', 'x'\)"):
        retrieval_metrics(img, txt, [0, 1, 2], names=("x", "x"))
    with pytest.raises(ValueError, match=r"names: expected two different short names, .*got \('a',\)"):
        retrieval_metrics(img, txt, [0, 1, 2], names=("a",))
    with pytest.raises(TypeError, match="names: expected two different short names"):
        metrics_from_ranks(torch.zeros(3), torch.zeros(3), names="it")
    with pytest.raises(TypeError, match="ks: expected a sequence of ints >= 1, .* got int"):
        retrieval_metrics(img, txt, [0, 1, 2], ks=5)
    with pytest.raises(TypeError, match="ks: expected a sequence of ints >= 1, .* got str"):
        recall_at_k(torch.zeros(3), ks="15")
