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


# -- identical texts: text_groups -------------------------------------------------------------------------------------


def brute_force_group_ranks(sim: np.ndarray, txt2img: list[int], labels: list[object]):
    """Ranks by definition: positives of text t are the images of every text labelled like t; ties count against."""
    num_images, num_texts = sim.shape
    positive = np.zeros((num_images, num_texts), dtype=bool)
    for t in range(num_texts):
        for u in range(num_texts):
            if labels[u] == labels[t]:
                positive[txt2img[u], t] = True
    i2t = [int((sim[i][~positive[i]] >= sim[i][positive[i]].max()).sum()) for i in range(num_images)]
    t2i = [int((sim[:, t][~positive[:, t]] >= sim[:, t][positive[:, t]].max()).sum()) for t in range(num_texts)]
    return i2t, t2i


def test_identical_captions_counted_by_hand():
    # 3 images, 4 captions: captions 0 and 1 describe image 0, caption 2 image 1, caption 3 image 2;
    # captions 1 and 2 are the same text.
    sim = torch.tensor([[0.2, 0.5, 0.9, 0.1], [0.3, 0.6, 0.4, 0.8], [0.7, 0.1, 0.2, 0.6]])
    txt2img = [0, 0, 1, 2]
    i2t, t2i = similarity_ranks(sim, txt2img)
    assert i2t.tolist() == [1, 2, 1]  # image 0: caption 2 (0.9) beats its best (0.5); image 1: 0.6 and 0.8 beat 0.4
    assert t2i.tolist() == [2, 1, 1, 1]
    i2t, t2i = similarity_ranks(sim, txt2img, text_groups=["a", "x", "x", "b"])
    # image 0 now owns caption 2 too (best 0.9, rank 0); image 1 owns caption 1 (best 0.6; caption 3 at 0.8 beats it);
    # captions 1 and 2 each have images 0 and 1 as positives (best 0.6 and 0.9): rank 0.
    assert i2t.tolist() == [0, 1, 1]
    assert t2i.tolist() == [2, 0, 0, 1]
    img, txt = torch.eye(3, dtype=torch.float64), sim.T.double()  # the same scores through the embedding path
    grouped = retrieval_ranks(img, txt, txt2img, text_groups=torch.tensor([5, 7, 7, 9]), chunk_size=2)
    assert grouped[0].tolist() == [0, 1, 1] and grouped[1].tolist() == [2, 0, 0, 1]
    metrics = retrieval_metrics(img, txt, txt2img, ks=(1,), text_groups=np.array(["a", "x", "x", "b"]))
    assert metrics["i2t_R@1"] == pytest.approx(100 / 3) and metrics["t2i_R@1"] == 50.0


def test_identical_copies_of_one_caption_no_longer_tie_against_their_images():
    img = torch.eye(3)
    txt = torch.tensor([[0.6, 0.8, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0]])  # captions 0 and 1 are the same text
    plain = retrieval_metrics(img, txt, [0, 1, 2], ks=(1,))
    grouped = retrieval_metrics(img, txt, [0, 1, 2], ks=(1,), text_groups=["dog", "dog", "cat"])
    # plain: each image's caption ties with its copy (rank 1 for images 0 and 1); caption 0 ranks image 1 first
    assert plain["i2t_R@1"] == pytest.approx(100 / 3) and plain["t2i_R@1"] == pytest.approx(200 / 3)
    assert grouped["i2t_R@1"] == 100.0 and grouped["t2i_R@1"] == 100.0


@given(
    st.integers(1, 12),
    st.integers(1, 30),
    st.integers(1, 6),
    st.booleans(),
    st.integers(1, 20),
    st.integers(0, 2**31 - 1),
)
def test_grouped_ranks_equal_the_definition_and_never_exceed_the_plain_ones(
    num_images, extra_texts, num_labels, coarse, chunk, seed
):
    rng = np.random.default_rng(seed)
    txt2img = np.concatenate([np.arange(num_images), rng.integers(0, num_images, extra_texts)])
    rng.shuffle(txt2img)
    labels = rng.integers(0, num_labels, len(txt2img)).tolist()
    shape = (num_images, len(txt2img))
    values = rng.integers(0, 3, shape) if coarse else rng.standard_normal(shape)  # coarse: many ties
    sim = torch.from_numpy(values.astype(np.float64))
    plain = similarity_ranks(sim, txt2img, chunk_size=chunk)
    grouped = similarity_ranks(sim, txt2img, chunk_size=chunk, text_groups=labels)
    expected = brute_force_group_ranks(sim.numpy(), txt2img.tolist(), labels)
    assert grouped[0].tolist() == expected[0] and grouped[1].tolist() == expected[1]
    embedded = retrieval_ranks(torch.eye(num_images, dtype=torch.float64), sim.T, txt2img, text_groups=labels)
    assert torch.equal(embedded[0], grouped[0]) and torch.equal(embedded[1], grouped[1])
    assert bool((grouped[0] <= plain[0]).all()) and bool((grouped[1] <= plain[1]).all())  # grouping never hurts
    distinct = similarity_ranks(sim, txt2img, chunk_size=chunk, text_groups=[f"t{k}" for k in range(len(txt2img))])
    assert torch.equal(distinct[0], plain[0]) and torch.equal(distinct[1], plain[1])


@pytest.mark.parametrize(
    ("groups", "match"),
    [
        (["a", "b"], "text_groups: has 2 labels but there are 3 texts"),
        ([["a", "b", "c"]], r"text_groups: expected one label per text \(a 1-D sequence\), got shape \(1, 3\)"),
        ("abc", r"text_groups: expected one label per text .* got shape \(\)"),
    ],
)
def test_bad_text_groups_are_refused(groups, match):
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(torch.randn(3, 4), torch.randn(3, 4), [0, 1, 2], text_groups=groups)


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
