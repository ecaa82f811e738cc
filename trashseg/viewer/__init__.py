"""`trashseg view`: a Streamlit app to look at datasets, augmentations, predictions,
ensemble stages, confusions, submissions and MLflow runs.

    sources.py   what the app was pointed at (local or s3:// through trashseg.storage)
    logic.py     pure functions (listing, search, overlays, scores, finders): no Streamlit
    app.py       the Streamlit entry point: one module per page under views/ (not pages/:
                 Streamlit would turn a pages/ folder into its own navigation)
"""
