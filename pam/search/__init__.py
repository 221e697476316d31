"""Personalized search: a text index of a photo collection (tantivy, BM25, embedded) whose top N
results are re-ranked per user by the personalization service, within a deadline.

    index      PhotoIndex: build (from a feature table, or any (image_id, text) rows), open, search
    personal   PersonalSearch (threads) and AsyncPersonalSearch (asyncio): the engine's top N,
               re-ranked through pam.client; the engine's own order when the service is slow, down
               or has no model for the user
"""
