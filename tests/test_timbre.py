"""TimbreEncoder: shapes over any length, normalised embeddings, song aggregation, invariances."""

from __future__ import annotations

import pytest
import torch

from recsys.encoders import timbre_encoder
from recsys.features import SongFeatures
from recsys.models.timbre import TimbreEncoder, TimbreModelConfig

CFG = TimbreModelConfig(
    n_mels=48, channels=8, hidden=32, attention_dim=16, embedding_dim=24, projection_dim=12, chunk_frames=50
)


@pytest.fixture(scope="module")
def model() -> TimbreEncoder:
    torch.manual_seed(0)
    m = TimbreEncoder(CFG)
    # A few training-mode passes so BatchNorm statistics are not the identity.
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 48, 60) * 2 - 5)
    return m.eval()


@pytest.mark.parametrize("frames", [1, 3, 37, 50, 201])
def test_forward_shapes_over_lengths(model, frames):
    emb, proj = model(torch.randn(2, 48, frames))
    assert emb.shape == (2, CFG.embedding_dim) and proj.shape == (2, CFG.projection_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert model.dim == CFG.embedding_dim


def test_embed_is_eval_mode_no_grad_and_keeps_training_flag(model):
    mel = torch.randn(3, 48, 80, requires_grad=True)
    model.train()
    z = model.embed(mel)
    assert model.training  # restored
    model.eval()
    assert not z.requires_grad and z.shape == (3, CFG.embedding_dim)
    assert torch.allclose(z, model(mel)[0].detach(), atol=1e-6)
    # Batch members do not influence each other in eval mode.
    assert torch.allclose(model.embed(mel[1:2]), z[1:2], atol=1e-5)


def test_loudness_offset_does_not_change_the_embedding(model):
    mel = torch.randn(2, 48, 120) - 6
    assert torch.allclose(model.embed(mel + 3.0), model.embed(mel), atol=1e-4)


def test_chunk_song_layout():
    m = TimbreEncoder(CFG)
    song = torch.arange(48 * 130, dtype=torch.float32).reshape(48, 130)
    chunks = m.chunk_song(song)  # 130 = 2 x 50 + 30 (>= 25: kept, wrapped round)
    assert chunks.shape == (3, 48, 50)
    assert torch.equal(chunks[1], song[:, 50:100])
    assert torch.equal(chunks[2], torch.cat([song[:, 100:], song[:, :20]], dim=1))
    assert m.chunk_song(song[:, :110]).shape == (2, 48, 50)  # 10-frame tail dropped
    assert m.chunk_song(song[:, :30]).shape == (1, 48, 30)  # shorter than a chunk: whole


def test_song_vector_is_normalised_mean_of_chunk_embeddings(model):
    song = torch.randn(48, 150) - 5
    expected = torch.nn.functional.normalize(model.embed(model.chunk_song(song)).mean(0), dim=-1)
    got = timbre_encoder(model).embed_songs([SongFeatures(song)])[0]
    assert got.shape == (CFG.embedding_dim,)
    assert torch.allclose(got, expected, atol=1e-6)


def test_bad_inputs_and_config_roundtrip():
    m = TimbreEncoder(CFG)
    with pytest.raises(ValueError, match=r"\(B, 48, T\)"):
        m(torch.randn(2, 40, 60))
    with pytest.raises(ValueError, match="one song"):
        timbre_encoder(m).embed_songs([SongFeatures(torch.randn(1, 48, 60))])
    assert TimbreModelConfig.from_dict(CFG.to_dict()) == CFG
    with pytest.raises(ValueError, match="unknown TimbreModelConfig fields"):
        TimbreModelConfig.from_dict({**CFG.to_dict(), "layers": 3})


def test_eval_front_end_with_folded_batchnorm_equals_the_modules():
    torch.manual_seed(0)
    model = TimbreEncoder(TimbreModelConfig())
    for _ in range(3):  # non-trivial running statistics and affine parameters
        model(torch.randn(8, 48, 120) * 3 + 1)
    with torch.no_grad():
        for bn in (block[1] for block in model.frontend):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    model.eval()
    x = torch.randn(2, 1, 48, 150)
    with torch.no_grad():
        torch.testing.assert_close(model._frontend_folded(x), model.frontend(x), rtol=1e-5, atol=1e-5)
