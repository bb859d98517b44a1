"""Published raw formats shared by the source adapters and the synthetic world (pure Python)."""

# user_profile.csv of Tianchi dataset 56 (the published header adds a trailing space to the last).
TAOBAO_PROFILE_COLUMNS = (
    "cms_segid",
    "cms_group_id",
    "final_gender_code",
    "age_level",
    "pvalue_level",
    "shopping_level",
    "occupation",
    "new_user_class_level",
)
