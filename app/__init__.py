"""Streamlit dashboard for the federated-learning engine: it only drives the Federation API and renders snapshots."""
