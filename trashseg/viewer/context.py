"""The app's shared state: the sources made local, and cached readers (Streamlit caches).

Everything read here is cached per process, keyed by path (and by mtime for images), so
paging back and forth decodes nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import streamlit as st

from trashseg.data.classes import ClassTable
from trashseg.data.layout import PreparedDataset
from trashseg.legend import legend, legend_html
from trashseg.viewer import logic
from trashseg.viewer.sources import ViewerSources, local_copy


@st.cache_resource(show_spinner="Fetching from the object store ...")
def _local(location: str) -> str:
    return str(local_copy(location))


@st.cache_data(max_entries=64, show_spinner=False)
def _images(root: str, split: str) -> list[logic.ImageEntry]:
    return logic.list_images(PreparedDataset(root), split)


@st.cache_data(max_entries=2048, show_spinner=False)
def _labels(path: str, mtime: float) -> np.ndarray:
    return logic.read_labels(path)


@st.cache_data(max_entries=512, show_spinner=False)
def _rgb(path: str, mtime: float) -> np.ndarray:
    return logic.read_rgb(path)


@st.cache_data(max_entries=4096, show_spinner=False)
def _tile(_ctx, path: str, mtime: float, file_name: str, classes: tuple[int, ...], alpha: float, outlines: bool,
          _outline_source: dict | None = None) -> bytes:
    picture = logic.overlay(_ctx.image(file_name), _ctx.truth(file_name), _ctx.palette, alpha=alpha, classes=classes)
    if outlines:
        picture = logic.draw_outlines(picture, (_outline_source or {}).get(file_name, []), _ctx.palette,
                                      _ctx.classes.category_to_class, classes)
    return logic.thumbnail(picture)


@dataclass
class ViewerContext:
    sources: ViewerSources

    @cached_property
    def dataset(self) -> PreparedDataset:
        return PreparedDataset(_local(self.sources.data))

    @cached_property
    def classes(self) -> ClassTable:
        return self.dataset.classes()

    @cached_property
    def palette(self) -> np.ndarray:
        return self.classes.palette()

    @cached_property
    def prediction_dirs(self) -> list[str]:
        return [_local(p) for p in self.sources.predictions]

    @cached_property
    def ensemble_dir(self) -> str | None:
        return _local(self.sources.ensemble) if self.sources.ensemble else None

    @cached_property
    def submission_file(self) -> str | None:
        return _local(self.sources.submission) if self.sources.submission else None

    def images(self, split: str) -> list[logic.ImageEntry]:
        return _images(str(self.dataset.root), split)

    def image(self, file_name: str) -> np.ndarray:
        path = self.dataset.image_path(file_name)
        return _rgb(str(path), path.stat().st_mtime)

    def truth(self, file_name: str) -> np.ndarray:
        path = self.dataset.mask_path(file_name)
        return _labels(str(path), path.stat().st_mtime)

    def tile(self, file_name: str, classes: tuple[int, ...], alpha: float, outlines: dict | None) -> bytes:
        """The Data grid's thumbnail of an image with its mask (and instance outlines), cached."""
        path = self.dataset.image_path(file_name)
        return _tile(self, str(path), path.stat().st_mtime, file_name, classes, alpha, outlines is not None,
                     _outline_source=outlines)

    def sources_for(self, split: str) -> list[logic.Source]:
        """Every model and ensemble stage that predicted `split`."""
        names = [e.file_name for e in self.images(split)]
        return logic.model_sources(self.prediction_dirs, names) + logic.stage_sources(self.ensemble_dir, split)

    def models_for(self, split: str) -> list[logic.Source]:
        return logic.model_sources(self.prediction_dirs, [e.file_name for e in self.images(split)])

    def legend(self, present=None) -> None:
        st.html(legend_html(legend(self.classes, present)))

    def split_choice(self, key: str, prefer: str = "val") -> str:
        splits = self.dataset.splits()
        return st.selectbox("Split", splits, index=splits.index(prefer) if prefer in splits else 0, key=key)


def context() -> ViewerContext:
    return ViewerContext(ViewerSources.from_env())


def mask_of(folder, file_name: str) -> np.ndarray:
    path = Path(folder.mask_path(file_name))
    return _labels(str(path), path.stat().st_mtime)
