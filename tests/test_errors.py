"""Bad input gets a clear error: the right exception type, naming the argument and what was expected.

Devices other than the CPU are stood in for by the ``meta`` device, so the device checks run without a GPU.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn

I, H, T, B = 3, 4, 5, 2


def x3(*shape: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> torch.Tensor:
    return torch.randn(*(shape or (T, B, I)), dtype=dtype, device=device)


# Each case: (what is wrong, the call, expected exception, a regex the message must match).
CONSTRUCTOR_CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("coupled on GRU", lambda: gatedrnn.GRU(I, H, coupled=True), TypeError,
     r"^coupled: not an option of GRU: coupled input-forget gates .* only for LSTM"),
    ("peephole on RNN", lambda: gatedrnn.RNN(I, H, peephole=True), TypeError,
     r"^peephole: not an option of RNN: .*only LSTM has"),
    ("reset on LSTM", lambda: gatedrnn.LSTM(I, H, reset="before"), TypeError,
     r"^reset: not an option of LSTM: .*only for GRU"),
    ("proj_size on GRUCell", lambda: gatedrnn.GRUCell(I, H, proj_size=2), TypeError,
     r"^proj_size: not an option of GRUCell"),
    ("forget_bias on GRU", lambda: gatedrnn.GRU(I, H, forget_bias=1.0), TypeError,
     r"^forget_bias: not an option of GRU: only LSTM has a forget gate"),
    ("nonlinearity on LSTM", lambda: gatedrnn.LSTM(I, H, nonlinearity="relu"), TypeError,
     r"^nonlinearity: not an option of LSTM"),
    ("misspelled keyword", lambda: gatedrnn.LSTM(I, H, peepholes=True), TypeError,
     r"^peepholes: not an option of LSTM: no such option"),
    ("proj_size == hidden_size", lambda: gatedrnn.LSTM(I, H, proj_size=H), ValueError,
     rf"^proj_size: expected proj_size < hidden_size \({H}\), got {H}$"),
    ("proj_size > hidden_size", lambda: gatedrnn.LSTMCell(I, H, proj_size=H + 3), ValueError,
     r"^proj_size: expected proj_size < hidden_size"),
    ("negative proj_size", lambda: gatedrnn.LSTM(I, H, proj_size=-1), ValueError,
     r"^proj_size: expected an int >= 0, got -1$"),
    ("reset sideways", lambda: gatedrnn.GRU(I, H, reset="sideways"), ValueError,
     r"^reset: expected 'after' or 'before', got 'sideways'$"),
    ("reset sideways on cell", lambda: gatedrnn.GRUCell(I, H, reset="sideways"), ValueError, r"^reset: expected"),
    ("sigmoid RNN", lambda: gatedrnn.RNN(I, H, nonlinearity="sigmoid"), ValueError,
     r"^nonlinearity: expected 'tanh' or 'relu', got 'sigmoid'$"),
    ("sigmoid RNNCell", lambda: gatedrnn.RNNCell(I, H, nonlinearity="sigmoid"), ValueError, r"^nonlinearity:"),
    ("hidden_size 0", lambda: gatedrnn.LSTM(I, 0), ValueError, r"^hidden_size: expected an int >= 1, got 0$"),
    ("hidden_size float", lambda: gatedrnn.GRU(I, 4.0), TypeError, r"^hidden_size: expected an int, got float$"),
    ("input_size 0", lambda: gatedrnn.RNN(0, H), ValueError, r"^input_size: expected an int >= 1, got 0$"),
    ("input_size bool", lambda: gatedrnn.LSTMCell(True, H), TypeError, r"^input_size: expected an int, got bool$"),
    ("num_layers 0", lambda: gatedrnn.LSTM(I, H, num_layers=0), ValueError, r"^num_layers: expected an int >= 1"),
    ("dropout > 1", lambda: gatedrnn.GRU(I, H, 2, dropout=1.5), ValueError,
     r"^dropout: expected a probability in \[0, 1\], got 1.5$"),
    ("dropout negative", lambda: gatedrnn.GRU(I, H, 2, dropout=-0.1), ValueError, r"^dropout: expected a probability"),
    ("bidirectional not bool", lambda: gatedrnn.RNN(I, H, bidirectional="yes"), TypeError,
     r"^bidirectional: expected a bool, got str$"),
    ("batch_first not bool", lambda: gatedrnn.LSTM(I, H, batch_first=1), TypeError, r"^batch_first: expected a bool"),
    ("peephole not bool", lambda: gatedrnn.LSTM(I, H, peephole=None), TypeError, r"^peephole: expected a bool"),
    ("layer_norm not bool", lambda: gatedrnn.GRU(I, H, layer_norm="no"), TypeError, r"^layer_norm: expected a bool"),
    ("forget_bias string", lambda: gatedrnn.LSTM(I, H, forget_bias="1"), TypeError,
     r"^forget_bias: expected a float, got str$"),
    ("forget_bias nan", lambda: gatedrnn.LSTM(I, H, forget_bias=float("nan")), ValueError,
     r"^forget_bias: expected a finite float, got nan$"),
    ("forget_bias with coupled", lambda: gatedrnn.LSTM(I, H, coupled=True, forget_bias=1.0), ValueError,
     r"^forget_bias: a coupled LSTM has no forget gate"),
    ("unknown engine", lambda: gatedrnn.LSTM(I, H, engine="warp"), ValueError,
     r"^engine: unknown engine 'warp'; expected one of: auto, .*reference"),
    ("engine not a string", lambda: gatedrnn.GRU(I, H, engine=1), TypeError, r"^engine: expected a string, got int$"),
]


def test_dropout_with_one_layer_warns() -> None:
    with pytest.warns(UserWarning, match=r"dropout=0.5 has no effect with num_layers=1"):
        gatedrnn.LSTM(I, H, dropout=0.5)


lstm = gatedrnn.LSTM(I, H, num_layers=2)
lstm_proj = gatedrnn.LSTM(I, H, proj_size=2)
gru = gatedrnn.GRU(I, H, batch_first=True)
rnn = gatedrnn.RNN(I, H, bidirectional=True)
packed = pack_padded_sequence(x3(), torch.tensor([5, 3]), enforce_sorted=False)

FORWARD_CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    # input rank, feature size, dtype, device, emptiness
    ("input 4-D", lambda: lstm(x3(T, B, 1, I)), ValueError,
     r"^input: expected a 3-D tensor \(T, B, I\) or a 2-D unbatched tensor \(T, I\), got a 4-D tensor"),
    ("input 1-D", lambda: gru(torch.randn(I)), ValueError, r"^input: expected a 3-D tensor \(B, T, I\) .*got a 1-D"),
    ("input not a tensor", lambda: rnn([[0.0] * I]), TypeError, r"^input: expected a torch.Tensor, got list$"),
    ("feature size", lambda: lstm(x3(T, B, I + 1)), ValueError,
     rf"^input: expected shape \(T, B, I\) with I = input_size = {I}, got shape \({T}, {B}, {I + 1}\)$"),
    ("feature size batch_first", lambda: gru(x3(B, T, I - 1)), ValueError,
     r"^input: expected shape \(B, T, I\) with I = input_size = 3, got shape \(2, 5, 2\)$"),
    ("feature size unbatched", lambda: rnn(x3(T, I + 2)), ValueError,
     r"^input: expected shape \(T, I\) for unbatched input with I = input_size = 3, got"),
    ("integer input", lambda: lstm(torch.ones(T, B, I, dtype=torch.int64)), TypeError,
     r"^input: expected a floating-point tensor, got torch.int64$"),
    ("float64 input, float32 module", lambda: gru(x3(B, T, I, dtype=torch.float64)), TypeError,
     r"^input: dtype torch.float64 does not match the module's parameters \(torch.float32\)"),
    ("input on another device", lambda: lstm(x3(device="meta")), ValueError,
     r"^input: on meta but the module's parameters are on cpu"),
    ("empty sequence", lambda: lstm(x3(0, B, I)), ValueError, r"^input: empty sequence \(T=0\)"),
    ("empty sequence batch_first", lambda: gru(x3(B, 0, I)), ValueError, r"^input: empty sequence \(T=0\)"),
    ("empty unbatched sequence", lambda: rnn(x3(0, I)), ValueError, r"^input: empty sequence \(T=0\)"),
    ("packed float64 into float32", lambda: lstm(pack_padded_sequence(x3(dtype=torch.float64), torch.tensor([5, 3]))),
     TypeError, r"^input: dtype torch.float64"),
    # initial states
    ("h0 wrong layers", lambda: lstm(x3(), (torch.randn(1, B, H), torch.randn(2, B, H))), ValueError,
     rf"^hx \(h_0\): expected shape \(2, {B}, {H}\), got \(1, {B}, {H}\)$"),
    ("c0 wrong batch", lambda: lstm(x3(), (torch.randn(2, B, H), torch.randn(2, B + 1, H))), ValueError,
     rf"^hx \(c_0\): expected shape \(2, {B}, {H}\), got \(2, {B + 1}, {H}\)$"),
    ("h0 width with proj", lambda: lstm_proj(x3(), (torch.randn(1, B, H), torch.randn(1, B, H))), ValueError,
     rf"^hx \(h_0\): expected shape \(1, {B}, 2\), got \(1, {B}, {H}\)$"),
    ("h0 bidirectional needs 2", lambda: rnn(x3(), torch.randn(1, B, H)), ValueError,
     rf"^hx \(h_0\): expected shape \(2, {B}, {H}\)"),
    ("h0 batched for unbatched input", lambda: rnn(x3(T, I), torch.randn(2, 1, H)), ValueError,
     rf"^hx \(h_0\): expected shape \(2, {H}\), got \(2, 1, {H}\)$"),
    ("h0 dtype", lambda: gru(x3(B, T, I), torch.randn(1, B, H, dtype=torch.float64)), TypeError,
     r"^hx \(h_0\): expected dtype torch.float32 \(the input's\), got torch.float64$"),
    ("c0 dtype", lambda: lstm(x3(), (torch.randn(2, B, H), torch.randn(2, B, H).half())), TypeError,
     r"^hx \(c_0\): expected dtype torch.float32"),
    ("h0 device", lambda: gru(x3(B, T, I), torch.randn(1, B, H, device="meta")), ValueError,
     r"^hx \(h_0\): expected device cpu \(the input's\), got meta$"),
    ("LSTM hx a single tensor", lambda: lstm(x3(), torch.randn(2, B, H)), TypeError,
     r"^hx: expected a tuple \(h_0, c_0\) of two tensors, got Tensor$"),
    ("LSTM hx of three", lambda: lstm(x3(), (torch.randn(2, B, H),) * 3), TypeError, r"^hx: expected a tuple"),
    ("GRU hx a list", lambda: gru(x3(B, T, I), [torch.randn(1, B, H)]), TypeError,
     r"^hx \(h_0\): expected a torch.Tensor, got list$"),
    # lengths
    ("lengths longer than T", lambda: lstm(x3(), lengths=torch.tensor([T + 1, 2])), ValueError,
     rf"^lengths: a length of {T + 1} is longer than the sequence \(T={T}\)$"),
    ("lengths zero", lambda: gru(x3(B, T, I), lengths=torch.tensor([0, 2])), ValueError,
     r"^lengths: every length must be >= 1 \(no empty sequences\), got 0$"),
    ("lengths negative", lambda: rnn(x3(), lengths=torch.tensor([3, -2])), ValueError,
     r"^lengths: every length must be >= 1 .*got -2$"),
    ("lengths wrong batch", lambda: lstm(x3(), lengths=torch.tensor([3, 2, 1])), ValueError,
     rf"^lengths: expected one length per sequence \({B}\), got 3$"),
    ("lengths 2-D", lambda: lstm(x3(), lengths=torch.tensor([[3, 2]])), ValueError,
     rf"^lengths: expected a 1-D tensor of shape \({B},\), got shape \(1, 2\)$"),
    ("lengths float", lambda: lstm(x3(), lengths=torch.tensor([3.0, 2.0])), TypeError,
     r"^lengths: expected an integer dtype, got torch.float32$"),
    ("lengths bool", lambda: lstm(x3(), lengths=torch.tensor([True, True])), TypeError,
     r"^lengths: expected an integer dtype, got torch.bool$"),
    ("lengths a string", lambda: lstm(x3(), lengths="5,3"), TypeError,
     r"^lengths: expected a 1-D integer tensor, got str$"),
    ("lengths list of floats", lambda: lstm(x3(), lengths=[5.0, 3.0]), TypeError,
     r"^lengths: expected a 1-D integer tensor or a list of ints$"),
    ("lengths with unbatched input", lambda: rnn(x3(T, I), lengths=torch.tensor([3])), ValueError,
     r"^lengths: not supported for an unbatched \(2-D\) input"),
    ("lengths with PackedSequence", lambda: lstm(packed, lengths=torch.tensor([5, 3])), ValueError,
     r"^lengths: not allowed with a PackedSequence input"),
]


def test_lengths_as_a_list_of_ints_is_accepted() -> None:
    out, _ = lstm(x3(), lengths=[5, 3])
    assert out[3:, 1].abs().max() == 0 and out[:3, 1].abs().min() > 0


lstm_cell = gatedrnn.LSTMCell(I, H)
gru_cell = gatedrnn.GRUCell(I, H)

CELL_CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("cell input 3-D", lambda: gru_cell(x3(T, B, I)), ValueError,
     r"^input: expected a 2-D tensor \(B, I\) or a 1-D unbatched tensor \(I,\), got a 3-D tensor"),
    ("cell feature size", lambda: lstm_cell(x3(B, I + 1)), ValueError,
     r"^input: expected shape \(B, I\) with I = input_size = 3, got shape \(2, 4\)$"),
    ("cell dtype", lambda: gru_cell(x3(B, I, dtype=torch.float64)), TypeError, r"^input: dtype torch.float64"),
    ("cell h shape", lambda: gru_cell(x3(B, I), torch.randn(B, H + 1)), ValueError,
     rf"^hx \(h_0\): expected shape \({B}, {H}\), got \({B}, {H + 1}\)$"),
    ("cell unbatched h batched", lambda: gru_cell(x3(I), torch.randn(1, H)), ValueError,
     rf"^hx \(h_0\): expected shape \({H},\), got \(1, {H}\)$"),
    ("cell c dtype", lambda: lstm_cell(x3(B, I), (torch.randn(B, H), torch.randn(B, H).double())), TypeError,
     r"^hx \(c_0\): expected dtype torch.float32"),
    ("cell LSTM hx one tensor", lambda: lstm_cell(x3(B, I), torch.randn(B, H)), TypeError,
     r"^hx: expected a tuple \(h_0, c_0\)"),
]


CONVERSION_CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("from_torch of a GRU into LSTM", lambda: gatedrnn.LSTM.from_torch(nn.GRU(I, H)), TypeError,
     r"^module: expected a torch.nn.modules.rnn.LSTM, got GRU$"),
    ("from_torch of a cell into a layer", lambda: gatedrnn.GRU.from_torch(nn.GRUCell(I, H)), TypeError,
     r"^module: expected a .*GRU, got GRUCell$"),
    ("from_torch of a layer into a cell", lambda: gatedrnn.RNNCell.from_torch(nn.RNN(I, H)), TypeError,
     r"^module: expected a .*RNNCell, got RNN$"),
    ("from_torch with a foreign option", lambda: gatedrnn.GRU.from_torch(nn.GRU(I, H), coupled=True), TypeError,
     r"^coupled: not an option of GRU"),
    ("to_torch peephole", lambda: gatedrnn.LSTM(I, H, peephole=True).to_torch(), ValueError,
     r"^to_torch: torch.nn has no counterpart for peephole$"),
    ("to_torch coupled layer_norm", lambda: gatedrnn.LSTMCell(I, H, coupled=True, layer_norm=True).to_torch(),
     ValueError, r"^to_torch: torch.nn has no counterpart for coupled, layer_norm$"),
    ("to_torch reset before", lambda: gatedrnn.GRU(I, H, reset="before").to_torch(), ValueError,
     r"^to_torch: torch.nn has no counterpart for reset=\"before\"$"),
    ("to_torch layer-norm RNN", lambda: gatedrnn.RNN(I, H, layer_norm=True).to_torch(), ValueError,
     r"counterpart for layer_norm$"),
    ("to_torch forget_bias without biases", lambda: gatedrnn.LSTM(I, H, bias=False, forget_bias=1.0).to_torch(),
     ValueError, r"^to_torch: a forget_bias cannot be folded into a module without biases"),
    ("to_torch projected cell", lambda: gatedrnn.LSTMCell(I, H, proj_size=2).to_torch(), ValueError,
     r"^to_torch: torch.nn.LSTMCell has no projection"),
    ("load_state_dict of another variant", lambda: gatedrnn.LSTM(I, H, coupled=True).load_state_dict(
        nn.LSTM(I, H).state_dict()), RuntimeError, r"size mismatch for weight_ih_l0"),
]


ALL_CASES = CONSTRUCTOR_CASES + FORWARD_CASES + CELL_CASES + CONVERSION_CASES


@pytest.mark.parametrize("what, call, error, message", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_bad_input_raises_a_clear_error(what: str, call: Callable[[], object], error: type[Exception],
                                        message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_messages_name_the_argument_first() -> None:
    """Every message above starts with the argument it is about, followed by a colon."""
    for what, call, error, _ in ALL_CASES:
        if error is RuntimeError:  # torch's own load_state_dict message
            continue
        with pytest.raises(error) as info:
            call()
        assert re.match(r"^[a-z_]+( \([hc]_0\))?: ", str(info.value)), (what, str(info.value))


def test_numpy_integers_are_sizes() -> None:
    np = pytest.importorskip("numpy")
    layer = gatedrnn.GRU(np.int64(I), np.int32(H), num_layers=np.int64(2))
    assert (layer.input_size, layer.hidden_size, layer.num_layers) == (I, H, 2)
    assert type(layer.hidden_size) is int
    cell = gatedrnn.LSTMCell(np.int64(I), np.int64(H), proj_size=np.int64(2))
    assert type(cell.proj_size) is int and cell.weight_hr.shape == (2, H)
