"""ECAPA-TDNN speaker encoder (`token2wav.code2wav_dit_model.input_embed.spk_encoder`):
a reference mel [B, T, 80] → a speaker vector [B, enc_dim] that conditions the DiT."""

from typing import List

import mlx.core as mx
import mlx.nn as nn

from ..config import DiTConfig

# Floor of the (weighted) variance before the square root, as in the reference pooling.
STD_EPS = 1e-12


def reflect_pad(x: mx.array, left: int, right: int) -> mx.array:
    """Reflect-pad the time axis of x [B, T, C] (the edge sample is not repeated).

    MLX's `mx.pad` has no reflect mode, so the mirrored frames are sliced out."""
    parts = [x]
    if left:
        parts.insert(0, x[:, 1 : left + 1][:, ::-1])
    if right:
        parts.append(x[:, -right - 1 : -1][:, ::-1])
    return mx.concatenate(parts, axis=1) if len(parts) > 1 else x


class SameConv1d(nn.Conv1d):
    """Conv1d with PyTorch's padding="same", padding_mode="reflect" (channels-last)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.total_pad = dilation * (kernel_size - 1)

    def __call__(self, x: mx.array) -> mx.array:
        left = self.total_pad // 2
        return super().__call__(reflect_pad(x, left, self.total_pad - left))


class TimeDelayNetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.conv = SameConv1d(in_channels, out_channels, kernel_size, dilation)

    def __call__(self, x: mx.array) -> mx.array:
        return nn.relu(self.conv(x))


class Res2NetBlock(nn.Module):
    """Channel groups processed hierarchically: group i sees group i plus group i-1's output."""

    def __init__(self, channels: int, scale: int, kernel_size: int, dilation: int):
        super().__init__()
        width = channels // scale
        self.blocks = [
            TimeDelayNetBlock(width, width, kernel_size, dilation) for _ in range(scale - 1)
        ]

    def __call__(self, x: mx.array) -> mx.array:
        parts = mx.split(x, len(self.blocks) + 1, axis=-1)
        outputs = [parts[0]]
        for i, block in enumerate(self.blocks):
            outputs.append(block(parts[i + 1] if i == 0 else parts[i + 1] + outputs[-1]))
        return mx.concatenate(outputs, axis=-1)


class SqueezeExcitationBlock(nn.Module):
    def __init__(self, channels: int, se_channels: int):
        super().__init__()
        self.conv1 = SameConv1d(channels, se_channels, 1)
        self.conv2 = SameConv1d(se_channels, channels, 1)

    def __call__(self, x: mx.array) -> mx.array:
        s = x.mean(axis=1, keepdims=True)  # (B, 1, C)
        return x * mx.sigmoid(self.conv2(nn.relu(self.conv1(s))))


class SqueezeExcitationRes2NetBlock(nn.Module):
    def __init__(self, in_channels, out_channels, scale, se_channels, kernel_size, dilation):
        super().__init__()
        self.tdnn1 = TimeDelayNetBlock(in_channels, out_channels, 1, 1)
        self.res2net_block = Res2NetBlock(out_channels, scale, kernel_size, dilation)
        self.tdnn2 = TimeDelayNetBlock(out_channels, out_channels, 1, 1)
        self.se_block = SqueezeExcitationBlock(out_channels, se_channels)

    def __call__(self, x: mx.array) -> mx.array:
        return self.se_block(self.tdnn2(self.res2net_block(self.tdnn1(x)))) + x


def _statistics(x: mx.array, weights: mx.array):
    """Weighted mean and population std over time; x, weights [B, T, C] → two [B, 1, C]."""
    mean = (weights * x).sum(axis=1, keepdims=True)
    var = (weights * (x - mean) ** 2).sum(axis=1, keepdims=True)
    return mean, mx.sqrt(mx.maximum(var, STD_EPS))


class AttentiveStatisticsPooling(nn.Module):
    def __init__(self, channels: int, attention_channels: int):
        super().__init__()
        self.tdnn = TimeDelayNetBlock(channels * 3, attention_channels, 1, 1)
        self.conv = SameConv1d(attention_channels, channels, 1)

    def __call__(self, x: mx.array) -> mx.array:
        T = x.shape[1]
        uniform = mx.full((1, T, 1), 1.0 / T, dtype=x.dtype)
        mean, std = _statistics(x, uniform)
        context = mx.concatenate(
            [x, mx.broadcast_to(mean, x.shape), mx.broadcast_to(std, x.shape)], axis=-1
        )  # (B, T, 3C)
        scores = self.conv(mx.tanh(self.tdnn(context)))  # (B, T, C)
        attention = mx.softmax(scores, axis=1, precise=True)
        mean, std = _statistics(x, attention)
        return mx.concatenate([mean, std], axis=-1)  # (B, 1, 2C)


class ECAPA(nn.Module):
    """ECAPA-TDNN: TDNN → SE-Res2Net blocks → multi-layer aggregation → attentive pooling → fc."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        ch, ks, dil = cfg.enc_channels, cfg.enc_kernel_sizes, cfg.enc_dilations
        if not len(ch) == len(ks) == len(dil):
            raise ValueError(
                "dit_config enc_channels, enc_kernel_sizes and enc_dilations must have the same "
                f"length, got {len(ch)}, {len(ks)}, {len(dil)}; fix config.json"
            )
        self.blocks: List[nn.Module] = [TimeDelayNetBlock(cfg.mel_dim, ch[0], ks[0], dil[0])]
        self.blocks += [
            SqueezeExcitationRes2NetBlock(ch[i - 1], ch[i], cfg.enc_res2net_scale,
                                          cfg.enc_se_channels, ks[i], dil[i])
            for i in range(1, len(ch) - 1)
        ]
        self.mfa = TimeDelayNetBlock(ch[-1], ch[-1], ks[-1], dil[-1])
        self.asp = AttentiveStatisticsPooling(ch[-1], cfg.enc_attention_channels)
        self.fc = SameConv1d(ch[-1] * 2, cfg.enc_dim, 1)

    def __call__(self, mel: mx.array) -> mx.array:
        """mel [B, T, mel_dim] → speaker vector [B, enc_dim]."""
        x, outputs = mel, []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        x = self.mfa(mx.concatenate(outputs[1:], axis=-1))  # the first TDNN is not aggregated
        return self.fc(self.asp(x))[:, 0]
