"""The one offline synthesizer (`lightning_most.audio.offline_voices`): voices, speakers, levels, errors."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile

from lightning_most.audio import SAMPLE_RATE
from lightning_most.audio.offline_voices import DEFAULT_VOICES, VOICES, Speaker, Voice, get_voice, speak

needs_flite = pytest.mark.skipif(
    shutil.which("flite") is None or shutil.which("sox") is None, reason="needs flite and sox (apt-get install flite sox)"
)


def test_voice_names_and_packages():
    assert set(DEFAULT_VOICES) <= set(VOICES)
    assert Voice("espeak-ng", "en-us").name == "espeakng_enus"
    assert Speaker(VOICES["flite_rms"], 1.1, 150).id == "flite_rms-t1.10-p+150"
    assert VOICES["festival_kal_diphone"].apt_package == "festvox-kallpc16k"
    assert VOICES["flite_slt"].apt_package == "flite"


def test_bad_voices_say_what_to_do():
    with pytest.raises(ValueError, match="engine must be one of"):
        Voice("say", "alex")
    with pytest.raises(ValueError, match="choose from"):
        get_voice("flite_nobody")


@needs_flite
def test_speak_writes_16khz_mono_16bit_at_the_asked_level(tmp_path):
    text = "Glue the sheet to the dark blue background."
    speaker = Speaker(get_voice("flite_rms"), tempo=1.1)
    normalised, plain = tmp_path / "a" / "normalised.wav", tmp_path / "plain.wav"
    speak(speaker, [(text, normalised)])
    speak(VOICES["flite_rms"], [(text, plain)], peak_db=None)
    for path in (normalised, plain):
        info = soundfile.info(str(path))
        assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "PCM_16")
    peak = np.abs(soundfile.read(str(normalised))[0]).max()
    assert 20 * np.log10(peak) == pytest.approx(-3.0, abs=0.1)
    assert soundfile.info(str(normalised)).frames < soundfile.info(str(plain)).frames  # tempo 1.1 is faster
