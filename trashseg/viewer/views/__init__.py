"""The viewer's pages, in sidebar order: title -> module (each has `render(ctx)`)."""

PAGES = {
    "Data": "trashseg.viewer.views.data",
    "Augmentation": "trashseg.viewer.views.augmentation",
    "Predictions": "trashseg.viewer.views.predictions",
    "Confusions & labels": "trashseg.viewer.views.confusions",
    "Submission": "trashseg.viewer.views.submission",
    "Runs": "trashseg.viewer.views.runs",
}
