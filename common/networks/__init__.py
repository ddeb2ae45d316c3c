"""common.networks"""
